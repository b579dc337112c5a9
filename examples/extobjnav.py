"""Train Memo with PPO on ExtObjNav: the CPU grid-house backend by default, habitat by config.

    python examples/extobjnav.py                               # ObjNavGrid (no downloads needed)
    python examples/extobjnav.py memory=fct env.kwargs.size=21
    python examples/extobjnav.py env.name=objnav_habitat       # needs habitat-sim + HSSD + VC-1
    fabric run --devices 2 --accelerator cpu examples/extobjnav.py ppo.num_trials=10

Settings: lightning_memo/configs/extobjnav.yaml (or config=path/to/your.yaml).
"""

from lightning_memo.train import main

if __name__ == "__main__":
    main("extobjnav")
