"""Pieces shared by the trainers (``cion.pretrain``, ``cion.finetune``): schedules as pure
functions of training progress, and the collectives a loss needs under DDP (a gather that keeps
gradients, batch normalisation over the global batch on CPU as well as GPU)."""
