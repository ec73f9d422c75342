# amazon-recs: `make run` runs the whole pipeline, `make test` runs the test suite.
# Both set everything up first (idempotently): the virtualenv, native BLAS, and
# the Delta and S3A jars, resolved once from Maven Central and cached under
# .cache/ivy. `make up` / `make down` start and stop local S3 and DynamoDB.

SHELL       := /bin/bash
.DEFAULT_GOAL := help

PYTHON      ?= python3.11
VENV        := .venv
PY          := $(VENV)/bin/python
DATA        ?=
# DATA=gift_cards | all_beauty | ml-latest-small runs on ../shared/data into data/<DATA>/.
CONFIG      ?= $(if $(DATA),conf/$(DATA).yaml,conf/local.yaml)
SET         ?=
IVY_DIR     := $(CURDIR)/.cache/ivy
# Delta, and S3A for s3:// (hadoop-aws matches pyspark's bundled Hadoop 3.3.4).
PACKAGES    := io.delta:delta-spark_2.12:3.3.2,org.apache.hadoop:hadoop-aws:3.3.4
SERVICES    := bootstrap/local/services.sh
PYTEST_ARGS ?=
# pytest-xdist workers for `make test` (0: all in this process). Two on two cores: a
# whole-pipeline run keeps one and a half busy at most (its driver's planning is one
# thread), so two workers overlap what one leaves idle.
TEST_WORKERS ?= 2
# `make deploy`: the config naming the bucket, and more `amazon-recs emr deploy`
# options (DEPLOY_ARGS=--create-bucket).
EMR_CONFIG  ?= conf/emr.yaml
DEPLOY_ARGS ?=
SHARED_DATA ?= $(or $(AMAZON_RECS_SHARED_DATA),../shared/data)
APP_PORT    ?= 8501
STREAMLIT_FLAGS := --server.address 127.0.0.1 --server.port $(APP_PORT) --server.headless true \
	--browser.serverAddress 127.0.0.1 --browser.gatherUsageStats false --client.toolbarMode minimal

export JAVA_HOME       := $(shell bootstrap/local/java-home.sh)
export PYSPARK_PYTHON  := $(CURDIR)/$(PY)
export PYSPARK_DRIVER_PYTHON := $(CURDIR)/$(PY)
export SPARK_LOCAL_IP  := 127.0.0.1
export PATH            := $(CURDIR)/$(VENV)/bin:$(PATH)

# spark-submit with the config's driver memory, master, packages and jar cache (bin/spark-submit).
SPARK_SUBMIT := bin/spark-submit
SET_ARGS     := $(foreach s,$(SET),--set $(s))

.PHONY: help setup run test lint format show clean clean-data
.PHONY: bench bench-scale bench-refresh bench-content bench-item-knn up down run-aws-local app app-aws-local bench-api
.PHONY: package package-lambda deploy

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

setup: $(VENV)/.installed .cache/.system-deps $(IVY_DIR)/resolved.json ## create .venv, install deps, native BLAS, Delta and S3A jars

$(VENV)/.installed: setup.py constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	@touch $@

.cache/.system-deps: bootstrap/local/system-deps.sh
	@mkdir -p .cache
	bootstrap/local/system-deps.sh
	@touch $@

$(IVY_DIR)/resolved.json: $(VENV)/.installed conf/local.yaml lib/amazon_recs/launch.py
	@echo "resolving $(PACKAGES) into $(IVY_DIR) (once; later runs work offline)"
	$(PY) -c "from amazon_recs.config import load_config; from amazon_recs.spark import get_spark; \
	get_spark(load_config('$(CONFIG)', ['spark.ivy_dir=$(IVY_DIR)', 'spark.log_level=ERROR'])).stop()" \
	  > .cache/resolve-jars.log 2>&1 || { tail -n 20 .cache/resolve-jars.log; echo "error: could not resolve $(PACKAGES) (see .cache/resolve-jars.log)"; exit 1; }
	$(PY) -m amazon_recs.launch --record-resolved $(IVY_DIR) $(PACKAGES)

run: setup ## run the whole pipeline (DATA=gift_cards|all_beauty|ml-latest-small, SET="als.rank=64 ...")
	$(SPARK_SUBMIT) jobs/pipeline.py --config $(CONFIG) $(SET_ARGS)

test: setup lint ## lint, then run the whole test suite (its 30 slowest tests listed at the end)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --durations=30 $(PYTEST_ARGS)

up: setup ## start local S3 (gofakes3, on disk) and DynamoDB (dynalite) on 127.0.0.1:9000 and :8000
	$(SERVICES) up

down: ## stop them (their data stays under .cache/aws-local)
	$(SERVICES) down

run-aws-local: up ## the pipeline on s3:// against the local servers, gift_cards uploaded to the bucket
	eval "$$($(SERVICES) env)" && \
	$(PY) bootstrap/local/seed_bucket.py --config conf/local-aws.yaml --from $(SHARED_DATA)/amazon-2018/gift_cards && \
	$(SPARK_SUBMIT) jobs/pipeline.py --config conf/local-aws.yaml $(SET_ARGS)

package: $(VENV)/.installed ## build the EMR artifacts in dist/<version>/ (wheel, jobs, conf, bootstrap, pinned requirements)
	$(VENV)/bin/amazon-recs emr package --out dist

package-lambda: $(VENV)/.installed ## build dist/lambda/<version>/: the Lambda functions' zip and their CloudFormation template (EMR_CONFIG, SET=...)
	$(VENV)/bin/amazon-recs emr package-lambda --config $(EMR_CONFIG) --out dist/lambda $(SET_ARGS)

deploy: package ## upload dist/<version>/ to s3://<aws.bucket>/artifacts/<version>/ (EMR_CONFIG, SET="aws.bucket=...")
	$(VENV)/bin/amazon-recs emr deploy --config $(EMR_CONFIG) --dist dist $(SET_ARGS) $(DEPLOY_ARGS)

app: setup ## the Streamlit app on http://127.0.0.1:8501 (APP_PORT=..., CONFIG=..., SET="...")
	$(VENV)/bin/streamlit run app/app.py $(STREAMLIT_FLAGS) -- --config $(CONFIG) $(SET_ARGS)

app-aws-local: up ## the app on the local DynamoDB and S3 (after make run-aws-local)
	eval "$$($(SERVICES) env)" && \
	$(VENV)/bin/streamlit run app/app.py $(STREAMLIT_FLAGS) -- --config conf/local-aws.yaml $(SET_ARGS)

bench-api: setup ## p50/p99 of the recommendations API against local DynamoDB, alone and under 20 clients during a publish (BENCHMARKS.md)
	$(PY) bench/api_latency.py --requests 2000 --users 250 --clients 20 --duration 60 --out BENCHMARKS.md

$(VENV)/.installed-bench: $(VENV)/.installed setup.py constraints.txt
	$(PY) -m pip install -q -c constraints.txt -e ".[dev,bench]"
	@touch $@

SIZE ?= 1m
TUNE ?=
bench-scale: setup $(VENV)/.installed-bench ## the whole pipeline on a generated shop (SIZE=100k|1m|10m, TUNE=1), implicit's ALS beside it (BENCHMARKS.md)
	$(PY) bench/scale.py --size $(SIZE) $(if $(TUNE),--tune) --out BENCHMARKS.md $(SET_ARGS)

bench-refresh: setup $(VENV)/.installed-bench ## refresh for USERS (1000) acting users on the SIZE shop's published version, ROUNDS (3) times in one session, and fold-in parity (BENCHMARKS.md)
	$(PY) bench/refresh.py --size $(SIZE) --users $(or $(USERS),1000) --rounds $(or $(ROUNDS),3) --out BENCHMARKS.md $(SET_ARGS)

bench-content: setup ## the content model's neighbour search, LSH beside exact, at 10k, 100k and 1M products (BENCHMARKS.md)
	bin/spark-submit bench/content.py --config conf/scale.yaml --sizes $(or $(SIZES),10k,100k,1m) --out BENCHMARKS.md $(SET_ARGS)

bench-item-knn: setup $(VENV)/.installed-bench ## our item-kNN neighbours (Spark) beside scipy's on the SIZE shop's train split (BENCHMARKS.md)
	bin/spark-submit bench/item_knn.py --size $(or $(SIZE),1m) --out BENCHMARKS.md

bench: setup $(VENV)/.installed-bench ## compare with tuned implicit ALS, BPR and item-kNN on ml-latest-small, or DATA (BENCHMARKS.md)
	$(PY) bench/compare.py --config conf/$(or $(DATA),ml-latest-small).yaml --out BENCHMARKS.md $(SET_ARGS)

lint: setup ## ruff lint and format check
	$(VENV)/bin/ruff check lib jobs tests bench bootstrap app
	$(VENV)/bin/ruff format --check lib jobs tests bench bootstrap app

format: setup ## ruff format and fix
	$(VENV)/bin/ruff format lib jobs tests bench bootstrap app
	$(VENV)/bin/ruff check --fix lib jobs tests bench bootstrap app

show: setup ## one user's top-10: make show USER_ID=<id> MODEL=hybrid
	$(VENV)/bin/amazon-recs show --config $(CONFIG) --user $(USER_ID) --model $(or $(MODEL),hybrid)

clean-data: ## remove the local outputs under data/ (keeps the generated sample)
	rm -rf data/warehouse data/models data/reports data/checkpoints

clean: ## remove outputs, caches and the virtualenv
	rm -rf data .cache $(VENV) *.egg-info lib/*.egg-info .pytest_cache dist
