"""Training small language models on the CPU: data, model, optimizers, loop, checkpoints.

    from slmx.train.trainer import TrainConfig, run_training
    run_training(TrainConfig(preset="tiny", max_steps=600), out_dir="runs/tiny")
"""
