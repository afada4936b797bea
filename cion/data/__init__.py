"""Data: the manifest contract, dataset readers, samplers, transforms and the synthetic world."""
