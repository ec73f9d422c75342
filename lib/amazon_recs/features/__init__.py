"""Bronze to silver: interactions, items, users, the stable id maps, and the train/test split.
May import the foundations (config, errors, schemas) only."""
