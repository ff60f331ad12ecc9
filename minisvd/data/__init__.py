"""Training data (filled by the training issue): the toy video world, single frames for stage I, and
readers for a `curate` output folder (its clips table and clip files)."""
