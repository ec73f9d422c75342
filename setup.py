"""Packaging for the amazon_recs library.

The wheel's install requirements deliberately leave out pyspark and delta-spark:
on EMR, Spark and Delta are the platform's (emr-7.13.0 ships Spark 3.5.6 and
Delta Lake 3.3.2). The ``dev`` extra pins the same versions for local runs.
"""

from setuptools import find_packages, setup

SPARK_PINS = [
    "pyspark==3.5.6",
    "delta-spark==3.3.2",
]

setup(
    name="amazon-recs",
    version="0.1.0",
    description="PySpark pipeline: Amazon-style reviews to personalised top-10 recommendations",
    package_dir={"": "lib"},
    packages=find_packages("lib"),
    python_requires=">=3.11,<3.12",
    install_requires=[
        "pyyaml>=6,<7",
        "numpy>=1.26,<2",
        "pandas>=2,<3",
        "pyarrow>=14,<24",  # 26 refuses NumPy 1.26, which pyspark 3.5 needs; 23 is checked
        "boto3>=1.34",
        "matplotlib>=3.8",
        "scipy>=1.11",  # the content model's exact neighbour search (sparse products)
        "numba>=0.60,<0.61",  # the LSH kernels (per-pair sparse dot products); 0.60 takes NumPy 1.26
    ],
    extras_require={
        "local": SPARK_PINS,
        # An independent Delta reader (deltalake, no Spark) used by the AWS
        # integration tests; the local S3 server is Go (bootstrap/local/s3server).
        "dev": SPARK_PINS
        + ["pytest>=8", "pytest-xdist>=3.5", "chispa>=0.10", "ruff>=0.6", "deltalake>=1"]
        + ["streamlit>=1.50,<2", "selenium>=4.20,<5"]
        # Validates the Lambda functions' CloudFormation template.
        + ["cfn-lint>=1.20,<2"],
        # The Streamlit app alone (reads the gold tables without Spark).
        "app": ["streamlit>=1.50,<2", "deltalake>=1"],
        "bench": ["implicit>=0.7,<0.8"],
    },
    entry_points={"console_scripts": ["amazon-recs=amazon_recs.cli:main"]},
)
