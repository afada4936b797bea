"""Pieces shared by the trainers (``cion.pretrain``, ``cion.finetune``): schedules as pure
functions of training progress (``schedules``), the collectives a loss needs under DDP
(``collectives``: a gather that keeps gradients, batch normalisation over the global batch on
CPU as well as GPU), the resumable training state and RNG states (``state``), the arithmetic
precision (``precision``), metrics.jsonl / TensorBoard and the progress bar (``logging``), and
recipe fields (``config``)."""
