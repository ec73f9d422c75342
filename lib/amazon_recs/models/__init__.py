"""The recommenders: implicit ALS, TF-IDF content with LSH neighbours, popularity."""
