"""The recommenders: implicit ALS, item-kNN on co-interactions, TF-IDF content with LSH
neighbours, popularity, the random floor; their fitting, tuning, top-k helpers and the hybrid blend.
Modules here may import the foundations (config, errors, schemas, spark, io),
features.split and evaluation.metrics; never pipeline, serving or aws. This
file itself imports nothing, so the model names are cheap to use anywhere."""

# Every model the recommend stage writes (the hybrid included) and the export publishes.
MODELS = ("als", "item_knn", "content", "popular", "hybrid", "random")
