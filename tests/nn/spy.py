"""Observing what a memory chose, without production state kept for tests."""


def record_segment_lens(memory) -> list[int]:
    """A list that receives the segment length of every later sequence-mode call of ``memory``."""
    used: list[int] = []
    choose = memory.segment_len_for

    def spy(segment_len=None):
        used.append(choose(segment_len))
        return used[-1]

    memory.segment_len_for = spy
    return used
