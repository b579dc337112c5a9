"""Train Memo on Dark-Key-To-Door with PPO (the ReLIC recipe) or the off-policy AMAGO recipe.

    python examples/dark_key_to_door.py                        # PPO; 5x5 grid, 20-step episodes, 200-step trials
    python examples/dark_key_to_door.py algo=amago             # off-policy: 1M env steps (~46 min on one core)
    python examples/dark_key_to_door.py memory=gru ppo.num_trials=50
    python examples/dark_key_to_door.py env.kwargs.size=9 env.kwargs.episode_len=50 env.trial_len=500
    python examples/dark_key_to_door.py trainer.resume=last    # continue the latest run
    python examples/dark_key_to_door.py trainer.eval_every=10  # evaluate on held-out seeds every 10 trials
    fabric run --devices 2 --accelerator cpu examples/dark_key_to_door.py ppo.num_trials=20

Settings: lightning_memo/configs/dark_key_to_door.yaml (or config=path/to/your.yaml); algo=ppo reads its
ppo: section, algo=amago its amago: section. Each run writes runs/<trainer.run_name>/version_<k>/
(config.yaml, metrics.csv, TensorBoard events, checkpoints/).
Errors print one line; add --debug for the traceback.
"""

from lightning_memo.train import main

if __name__ == "__main__":
    main("dark_key_to_door")
