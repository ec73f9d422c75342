"""The pipeline's stages, one module each (``run_<stage>``), their order, versions and summary.
May import every other package; nothing imports it but the command line and the jobs."""
