"""Amazon-style reviews to personalised top-10 recommendations, on Spark.
The foundations live here (config, errors, schemas, spark, io, events, failpoints) and import no
package below (but the model names of models/__init__);
the packages are pipeline/, ingest/, features/, models/, evaluation/, serving/ and aws/."""

__version__ = "0.1.0"
