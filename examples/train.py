"""Train a memory policy with PPO on any registered gymnasium task (raw rewards).

    python examples/train.py                                             # CartPole-v1, Memo, 200k env steps
    python examples/train.py env.name=popgym-RepeatPreviousEasy-v0 env.trial_len=52 ppo.update_every=26
    python examples/train.py env.name=MiniGrid-MemoryS7-v0 env.trial_len=250 memory=gru
    python examples/train.py env.name=CartPole-v1 env.kwargs.mode=meta   # trials of restarted episodes
    python examples/train.py memory=none trainer.max_env_steps=50000     # the memoryless control
    python examples/train.py config=dark_key_to_door algo=amago          # any packaged config, either recipe

Settings: lightning_memo/configs/gym.yaml (or config=path/to/your.yaml); env.kwargs go to
gymnasium.make, plus GymTrialEnv's mode and observation_key. POPGym and MiniGrid ids import their
package on demand. Runs go to runs/<trainer.run_name>/version_<k>/. Errors print one line; add --debug.
"""

from lightning_memo.train import main

if __name__ == "__main__":
    main("gym")
