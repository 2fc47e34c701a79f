"""The training of the multi-view UNet, in the pieces that ``train.py`` puts together.

``run_setup`` builds a run (accelerator, run folder, frozen parts, resume, EMA, data streams),
``run`` holds it and saves or exports it, ``loop`` runs its steps; ``config`` is the ``train:``
section; ``preflight`` checks a run's inputs before any compute; ``base_pipeline`` loads the
frozen Stable Diffusion parts; ``training_model`` decides what trains (full, lora, new_layers);
``optim`` builds AdamW and its warm-up; ``data_segments`` streams the batches of every step
reproducibly; ``batches`` turns a batch into model inputs; ``step`` is one optimiser step;
``ema`` the moving average; ``checkpoints`` and ``export`` write the training state and the
inference export (its format: ``viewdiff.prior``) atomically; ``signals`` turns SIGTERM/SIGUSR1
into a checkpoint and exit status 3; ``tracking`` logs scalars and summary lines;
``validation`` draws the validation grids.
"""
