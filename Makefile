# The WRPO pipeline as a dependency graph on files. Override any variable:
#   make pairs WORK=runs/mine PROMPTS=my.jsonl N=8
# Every dataset under $(WORK) is Parquet: open it in DuckDB (see README.md).

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DELETE_ON_ERROR:

BIN            ?= target/release
WORK           ?= runs/demo
PROMPTS        ?= data/demo/prompts.jsonl
TARGET         ?= models/smollm2-135m-instruct-q4_1.gguf
SOURCES        ?= gemma3=models/gemma-3-270m-q4_k_m.gguf smollm2=models/smollm2-135m-instruct-q4_1.gguf
REWARD         ?= models/reward
N              ?= 5
MAX_NEW_TOKENS ?= 256
TEMPERATURE    ?= 0.8
TOP_P          ?= 0.95
SEED           ?= 42
EVAL_FRACTION  ?= 0.1
SFT_FRACTION   ?= 0.3333333333
STRATEGY       ?= wrpo
ALPHA_MAX      ?= 0.1
BETA           ?= 0.01

SAMPLE := $(BIN)/wrpo-sample
SCORE  := $(BIN)/wrpo-score
TRAIN  := $(BIN)/wrpo-train
# A pipeline step needs its binary; say how to get it instead of a bare "command not found".
need = @test -x $(1) || { echo "$(notdir $(1)) is not built yet ($(1) is missing): run 'make build' first" >&2; exit 1; }
SAMPLING := --n $(N) --max-new-tokens $(MAX_NEW_TOKENS) --temperature $(TEMPERATURE) --top-p $(TOP_P) --seed $(SEED)

.PHONY: help build test test-remote models bench-decode bench-sample prompts pairs train clean-run
.DEFAULT_GOAL := help

help: ## Show the targets and the variables to override
	@echo "WRPO pipeline. Targets:"
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | awk -F'\t' '{printf "  make %-13s %s\n", $$1, $$2}'
	@echo "Variables (current value):"
	@for v in WORK PROMPTS TARGET SOURCES REWARD N MAX_NEW_TOKENS TEMPERATURE TOP_P SEED EVAL_FRACTION SFT_FRACTION STRATEGY ALPHA_MAX BETA; do \
	  printf "  %-15s %s\n" "$$v" "$$(make -s --no-print-directory print-$$v)"; done

print-%:
	@echo '$($*)'

# The examples are the benchmark drivers; building them with the binaries
# keeps one feature set, so neither build redoes the other's dependencies.
build: ## Build the three binaries (release)
	cargo build --release --workspace --bins --examples

test: models ## Run every test (the command CI runs), including the demo-model checks
	cargo test --workspace -- --include-ignored --skip openai_server_backend
	bash scripts/check-duckdb.sh

test-remote: models ## The OpenAI-backend test against llama-cpp-python's server on loopback (first run compiles llama.cpp, ~25 min)
	bash scripts/test-remote.sh

models: ## Fetch the demo GGUF models into models/ (pinned, SHA-256 checked)
	bash scripts/fetch-models.sh

bench-decode: models ## Decode tokens/s of our quantized path against llama.cpp on SmolLM2 Q4_1 (2 threads)
	bash scripts/bench/decode.sh

bench-sample: models ## wrpo-sample generate tokens/s against llama.cpp (sequential, batched) and transformers
	bash scripts/bench/sample.sh

prompts: $(WORK)/prompts.parquet ## Import PROMPTS into WORK/prompts.parquet

pairs: $(WORK)/pairs.parquet ## Build the WRPO pairs (samples, scores, SFT, target samples)

train: $(WORK)/wrpo/.done ## Train the target with WRPO on the pairs

clean-run: ## Delete WORK
	rm -rf $(WORK)

$(WORK)/prompts.parquet: $(PROMPTS)
	$(call need,$(SAMPLE))
	$(SAMPLE) import --input $< --out $@ --eval-fraction $(EVAL_FRACTION) --seed $(SEED)

# The demo models are fetched on first use; other model paths must exist.
DEMO_MODELS := models/smollm2-135m-instruct-q4_1.gguf models/gemma-3-270m-q4_k_m.gguf
SOURCE_FILES := $(foreach s,$(SOURCES),$(lastword $(subst =, ,$(s))))
$(DEMO_MODELS):
	bash scripts/fetch-models.sh

# 1. N samples per train prompt from every source model.
$(WORK)/source-samples/.done: $(WORK)/prompts.parquet $(filter $(DEMO_MODELS),$(SOURCE_FILES))
	$(call need,$(SAMPLE))
	$(SAMPLE) generate --prompts $< $(addprefix --model ,$(SOURCES)) --split train $(SAMPLING) --out $(@D)
	touch $@

# 2. Every source sample scored by the reward model.
$(WORK)/source-scores/.done: $(WORK)/source-samples/.done
	$(call need,$(SCORE))
	$(SCORE) score --prompts $(WORK)/prompts.parquet --samples $(<D) --reward-model $(REWARD) --out $(@D)
	touch $@

# 3-4. y_ws per prompt; SFT third and preference two thirds.
$(WORK)/sft.parquet $(WORK)/preference-prompts.parquet &: $(WORK)/source-scores/.done
	$(call need,$(SCORE))
	$(SCORE) sft-set --prompts $(WORK)/prompts.parquet --source-scores $(<D) --sft-fraction $(SFT_FRACTION) \
	  --seed $(SEED) --out $(WORK)/sft.parquet --out-preference $(WORK)/preference-prompts.parquet

# 5. Target-SFT: the target fine-tuned on (x, y_ws).
$(WORK)/target-sft/.done: $(WORK)/sft.parquet $(filter $(DEMO_MODELS),$(TARGET))
	$(call need,$(TRAIN))
	$(TRAIN) sft --model $(TARGET) --data $< --out $(@D) --seed $(SEED)
	touch $@

# 6. N samples per preference prompt from Target-SFT, scored.
$(WORK)/target-samples/.done: $(WORK)/target-sft/.done $(WORK)/preference-prompts.parquet
	$(call need,$(SAMPLE))
	$(SAMPLE) generate --prompts $(WORK)/preference-prompts.parquet --model target-sft=$(WORK)/target-sft $(SAMPLING) --out $(@D)
	touch $@

$(WORK)/target-scores/.done: $(WORK)/target-samples/.done
	$(call need,$(SCORE))
	$(SCORE) score --prompts $(WORK)/preference-prompts.parquet --samples $(<D) --reward-model $(REWARD) --out $(@D)
	touch $@

# 7-8. (x, y_ws, y_wt, y_l).
$(WORK)/pairs.parquet: $(WORK)/source-scores/.done $(WORK)/target-scores/.done $(WORK)/preference-prompts.parquet
	$(call need,$(SCORE))
	$(SCORE) pairs --prompts $(WORK)/preference-prompts.parquet --source-scores $(WORK)/source-scores \
	  --target-scores $(WORK)/target-scores --strategy $(STRATEGY) --out $@

# 9. WRPO from Target-SFT (the frozen reference) on the pairs.
$(WORK)/wrpo/.done: $(WORK)/pairs.parquet $(WORK)/target-sft/.done
	$(call need,$(TRAIN))
	$(TRAIN) wrpo --model $(WORK)/target-sft --pairs $< --alpha-max $(ALPHA_MAX) --beta $(BETA) --out $(@D) --seed $(SEED)
	touch $@
