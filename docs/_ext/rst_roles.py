"""Griffe extension for the API reference: Sphinx roles in docstrings become mkdocstrings cross-references.

Docstrings may say ``:class:`MemoPolicy``` or ``:meth:`TrialModule.refresh_cache```; Markdown would print
those literally. Here a role naming a public object (anything in a package's ``__all__``, or a member of
one) becomes a link to its reference entry; any other role becomes inline code. An ``Args:`` entry naming
several parameters at once (``hidden, layers: sizes of the MLP``) becomes one entry per parameter, each
with the shared text, as the Google style the reference parses has one name per entry. Classes and
functions end with a link to their source lines on GitHub (the inline source is there too, folded).
Config fields carry attribute docstrings (a string on the line after the field), which griffe reads
as they are.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

from griffe import Docstring, Extension, Object

PACKAGES = (
    "lightning_memo",
    "lightning_memo.nn",
    "lightning_memo.envs",
    "lightning_memo.algos",
    "lightning_memo.algos.amago",
    "lightning_memo.callbacks",
    "lightning_memo.config",
    "lightning_memo.train",
)
# objects documented under their own module rather than a package's __all__
EXTRA = {"MemoPolicy": "lightning_memo.policy.MemoPolicy", "TrialCollector": "lightning_memo.rollout.TrialCollector"}
SHARED_ARG = re.compile(r"^(?P<indent>[ \t]+)(?P<names>\w+(?:, \w+)+): (?P<text>.*)$", re.MULTILINE)
SOURCE_URL = "https://github.com/lightning-memo/lightning_memo/blob/main/{path}#L{start}-L{end}"
ROLE = re.compile(r":(?:py:)?(class|meth|func|attr|mod|obj|data|exc):`~?([\w.]+)(?:\(\))?`")


def public_names() -> dict[str, str]:
    """Short name -> the path its reference entry is rendered under (the most specific package wins)."""
    names: dict[str, str] = {}
    for package in PACKAGES:
        module = importlib.import_module(package)
        for name in getattr(module, "__all__", ()):
            if name[0].isupper() or callable(getattr(module, name)):
                names[name] = f"{package}.{name}"
    names.pop("envs", None)
    return {**names, **EXTRA}


class RstRoles(Extension):
    """Rewrite ``:role:`target``` in every docstring griffe loads."""

    def __init__(self) -> None:
        super().__init__()
        self.names = public_names()

    def link(self, match: re.Match, owner: Object | None = None) -> str:
        target = match.group(2)
        head, _, rest = target.partition(".")
        if head in self.names:
            return f"[`{target}`][{self.names[head]}{'.' + rest if rest else ''}]"
        if owner is not None and not rest and head in owner.all_members:  # a member of the docstring's class
            return f"[`{target}`][{owner.path}.{head}]"
        return f"`{target}`"

    @staticmethod
    def split_shared(match: re.Match) -> str:
        indent, text = match.group("indent"), match.group("text")
        return "\n".join(f"{indent}{name}: {text}" for name in match.group("names").split(", "))

    def on_instance(self, *, obj: Object, **kwargs: Any) -> None:
        # not __init__: merge_init_into_class shows its docstring in the class's, which has the link already
        if (obj.is_class or obj.is_function) and obj.name != "__init__" and obj.lineno and obj.endlineno:
            url = SOURCE_URL.format(path=obj.relative_filepath.as_posix(), start=obj.lineno, end=obj.endlineno)
            link = f"[Source on GitHub]({url}){{ .source-link }}"
            if obj.docstring is None:
                obj.docstring = Docstring(link, parent=obj)
            else:
                obj.docstring.value += f"\n\n{link}"
        if obj.docstring is not None:
            owner = obj if obj.is_class else obj.parent if obj.parent is not None and obj.parent.is_class else None
            value = ROLE.sub(lambda match: self.link(match, owner), obj.docstring.value)
            obj.docstring.value = SHARED_ARG.sub(self.split_shared, value)
