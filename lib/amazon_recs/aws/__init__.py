"""AWS deployment: EMR requests and the ``emr`` subcommands, packaging and deploy, IAM
documents, the Athena DDL. May import config, errors and the stage order; never pyspark."""
