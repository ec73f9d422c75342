"""Raw files to bronze rows: readers of each format, rejects and reconciliation, the sample shop.
May import the foundations (config, errors, schemas, io) only."""
