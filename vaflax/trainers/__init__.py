"""Every task of vaflax (vaflax/tasks.py registers them on import) and the multi-stage recipes."""

from vaflax.trainers import cnn_rnn, distill, emofan, fusion, mae, mae_va, supervised  # noqa: F401
