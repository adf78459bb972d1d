# The WRPO pipeline as a dependency graph on files. Override any variable:
#   make pairs WORK=runs/mine PROMPTS=my.jsonl N=8
# Every dataset under $(WORK) is Parquet: open it in DuckDB (see README.md).

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DELETE_ON_ERROR:
# Prerequisites in $$(...) are expanded only for the targets being made (the settings files).
.SECONDEXPANSION:

BIN            ?= target/release
WORK           ?= runs/demo
PROMPTS        ?= data/demo/prompts.jsonl
# The default run: Gemma-3-270M (a base model) takes on SmolLM2-135M-Instruct's
# answers, scored by similarity to the reference answers.
TARGET         ?= models/gemma-3-270m-q4_k_m.gguf
SOURCES        ?= smollm2=models/smollm2-135m-instruct-q4_1.gguf
REWARD         ?= similarity:models/all-minilm-l6-v2
N              ?= 4
# Samples per prompt of each source and of Target-SFT (N each by default).
# WRPO's source term teaches only where y_ws beats y_wt: the paper's y_ws is
# the best of 10 sources x 5 samples against y_wt's best of 5
# (pairs.summary.json's source_gain says how often it does here).
SOURCE_N       ?= $(N)
TARGET_N       ?= $(N)
MAX_NEW_TOKENS ?= 128
TEMPERATURE    ?= 0.8
TOP_P          ?= 0.95
SEED           ?= 42
EVAL_FRACTION  ?= 0.2
EVAL_N         ?= 4
# Samples per prompt where the validation split is answered (sweep, ablation, the dose's rehearsal).
VALIDATION_N   ?= $(EVAL_N)
SFT_FRACTION   ?= 0.3333333333
STRATEGY       ?= wrpo
ALPHA_MAX      ?= 0.1
BETA           ?= 0.1
SFT_LR         ?= 5e-5
SFT_EPOCHS     ?= 3
WRPO_LR        ?= 2e-6
EPOCHS         ?= 1
MAX_LENGTH     ?= 512
# Non-empty: a response cut off at MAX_NEW_TOKENS may be y_ws, y_wt or y_l
# (by default it is none of them).
ALLOW_TRUNCATED ?=

SAMPLE := $(BIN)/wrpo-sample
SCORE  := $(BIN)/wrpo-score
TRAIN  := $(BIN)/wrpo-train
# A pipeline step needs its binary; say how to get it instead of a bare "command not found".
need = @test -x $(1) || { echo "$(notdir $(1)) is not built yet ($(1) is missing): run 'make build' first" >&2; exit 1; }
SAMPLING := --max-new-tokens $(MAX_NEW_TOKENS) --temperature $(TEMPERATURE) --top-p $(TOP_P) --seed $(SEED)
LENGTHS  := --max-length $(MAX_LENGTH) --max-prompt-length $$(( $(MAX_LENGTH) / 2 ))
# Non-empty: preference training (WRPO, DPO, the ablation) keeps the token
# embeddings (and a head tied to them) as Target-SFT has them, which spares
# the gradient of Gemma's 262k x 640 embedding every step.
FREEZE_EMBEDDINGS ?=
TRAINING_STEPS := --micro-batch 2 --grad-accum 2 --warmup-ratio 0.1 $(LENGTHS) $(if $(FREEZE_EMBEDDINGS),--freeze-embeddings)
TRAINING := $(TRAINING_STEPS) --seed $(SEED)
# An LLM judge for `make eval`, openai:URL#MODEL (an OpenAI-compatible chat
# server, e.g. vLLM's): empty, no judge. Checked now, not after the eval's sampling.
JUDGE ?=
ifneq ($(JUDGE),)
ifeq ($(filter openai:%,$(JUDGE)),)
$(error JUDGE=$(JUDGE): expected openai:URL#MODEL, an OpenAI-compatible chat server, e.g. JUDGE=openai:http://localhost:8000/v1#Qwen/Qwen2.5-7B-Instruct)
endif
endif
# Requests to served models, rewards and judges (openai:, classify:, judge:, similarity:openai:):
# the environment variable holding the API key, requests in flight per model, retries and
# seconds per request. Empty: the binaries' defaults (OPENAI_API_KEY, 8, 5, 600).
API_KEY_ENV ?=
CONCURRENCY ?=
RETRIES ?=
TIMEOUT ?=
REMOTE = $(strip $(if $(API_KEY_ENV),--api-key-env $(API_KEY_ENV)) $(if $(CONCURRENCY),--concurrency $(CONCURRENCY)) \
  $(if $(RETRIES),--retries $(RETRIES)) $(if $(TIMEOUT),--timeout $(TIMEOUT)))
# Training seeds (the data order) of WRPO and DPO. Empty: one run each with
# SEED (WORK/wrpo, WORK/dpo). "1 2": one run per seed (WORK/wrpo-seed1, ...),
# evaluated as wrpo@1, wrpo@2, ..., which the report also pools per prompt
# into wrpo and dpo for the paired comparisons.
SEEDS ?=
# The alpha ablation (`make ablation`): one WRPO run per alpha_max in ALPHAS
# (0 is DPO on y_wt; 1 still ramps alpha up from 0, DPO on y_ws is static alpha 1) into WORK/wrpo-alphaA and one with
# alpha fixed at STATIC_ALPHA (WORK/wrpo-staticA), all with the first training
# seed, answered on ABLATION_SPLIT into WORK/ablation as alphaA and staticA:
# each compared with Target-SFT (static with dynamic at its value), plotted
# against alpha_max in WORK/ablation/sweep.png.
ALPHAS ?= 0 0.1 0.3 1
STATIC_ALPHA ?= 0.1
# Empty: the ablation trains on every pair, and two of its runs are made
# already: alpha_max = ALPHA_MAX is the first seed's WRPO run, and 0 its DPO run
# (alpha = 0 turns the WRPO loss into DPO's on y_wt term by term). N: every run
# of the ablation trains on the same N pairs (wrpo-train --subsample).
ABLATION_PAIRS ?=
ABLATION_SPLIT ?= eval
FIRST_SEED = $(or $(firstword $(SEEDS)),$(SEED))
alpha_dir = $(or $(if $(ABLATION_PAIRS),,$(if $(filter $(1),$(ALPHA_MAX)),$(firstword $(call run_dirs,wrpo)),$(if $(filter 0,$(1)),$(firstword $(call run_dirs,dpo))))),$(WORK)/wrpo-alpha$(1))
ABLATION_DONE = $(foreach a,$(ALPHAS),$(call alpha_dir,$(a))/.done) $(if $(STATIC_ALPHA),$(WORK)/wrpo-static$(STATIC_ALPHA)/.done)
SUBSAMPLE = $(if $(ABLATION_PAIRS),--subsample $(ABLATION_PAIRS))
# Which held-out prompts `make eval` answers: eval (the test split, into
# WORK/eval) or validation (WORK/validation), the split for choosing settings.
EVAL_SPLIT ?= eval
EVAL_DIR = $(WORK)/$(if $(filter validation,$(EVAL_SPLIT)),validation,eval)
run_dirs = $(if $(SEEDS),$(foreach s,$(SEEDS),$(WORK)/$(1)-seed$(s)),$(WORK)/$(1))
WRPO_DONE = $(addsuffix /.done,$(call run_dirs,wrpo))
DPO_DONE = $(addsuffix /.done,$(call run_dirs,dpo))
# $(call preference,STAGE,LOSS ARGS,SEED[,LR[,PAIRS]]): preference training from Target-SFT on the pairs
# (default WORK/pairs-ref.parquet), into $(@D), at learning rate LR (default WRPO_LR).
preference = $(TIMED) $(1) $(TRAIN) wrpo $(2) --model $(WORK)/target-sft/final --pairs $(or $(5),$(WORK)/pairs-ref.parquet) --lr $(or $(4),$(WRPO_LR)) \
  --beta $(BETA) --epochs $(EPOCHS) --out $(@D) $(TRAINING_STEPS) --seed $(3)
# $(call train_preference,STAGE,...): the recipe of every preference run, with preference's arguments:
# the trainer built, $(@D) started afresh when its settings changed, the run, its .done stamp. The rules
# that use it stay apart: each names the settings whose change reruns it.
define train_preference
$(call need,$(TRAIN))
$(call fresh,$(1),$(@D),$@)
$(call preference,$(1),$(2),$(3),$(4),$(5))
touch $@
endef
WRPO_ARGS = --alpha-max $(ALPHA_MAX)
DPO_ARGS = --loss dpo --dpo-chosen target
# Pipeline steps build the binaries first (a no-op when they are up to date);
# `make ... BUILD=` skips that, e.g. with BIN=target/debug.
BUILD ?= build
LIMIT ?=
EVAL_LIMIT ?=
# A variable on the command line that neither this Makefile nor the scripts it runs read is
# a typo (ALHPA_MAX=0.3 would train with the default alpha_max): refused, before any work.
KNOWN_VARS := $(shell sed -nE 's/^[[:space:]]*([A-Z][A-Z0-9_]*)[[:space:]]*[:?+]?=.*/\1/p' $(firstword $(MAKEFILE_LIST))) \
  $(shell grep -ohE '\$$\{[A-Z][A-Z0-9_]*' scripts/*.sh scripts/bench/*.sh | cut -c3-)
UNKNOWN_VARS := $(filter-out $(KNOWN_VARS),$(foreach v,$(.VARIABLES),$(if $(filter command line,$(origin $(v))),$(v))))
ifneq ($(UNKNOWN_VARS),)
$(error unknown variable(s) $(UNKNOWN_VARS): neither the Makefile nor its scripts read them (a typo?); the Makefile's head and `make help` name the usual ones)
endif
# Each step's wall time goes to WORK/timings.csv.
TIMED = scripts/timed.sh $(WORK)
# $$(call settings,STEP,VALUE), as a prerequisite: the file WORK/.settings/STEP,
# which scripts/settings.sh rewrites only when VALUE changed, so that a step
# reruns when its settings do (`make -n` shows it). $(call fresh,STEP,DIR,DONE)
# then sets DIR aside before the step writes it again (scripts/fresh.sh).
# make expands every rule's prerequisites, so only runs that make pipeline
# files write settings files.
NOT_PIPELINE := help print-% build test test-remote test-gpu-path test-gpu experiment study-sweep study-dose study-dose-gate models bench-decode bench-sample bench-train clean-run
DRY := $(if $(findstring n,$(firstword -$(MAKEFLAGS)))$(findstring q,$(firstword -$(MAKEFLAGS))),dry)
settings = $(if $(filter-out $(NOT_PIPELINE),$(or $(MAKECMDGOALS),help)),$(shell scripts/settings.sh $(WORK) $(1) '$(2)' $(DRY)),$(WORK)/.settings/$(1))
# What a dry run (make -n, make -q) shows for changed settings: out of date, and nothing written.
%.changed: ;
# Settings files appear while make reads the rules; a pattern rule's search looks
# for them in make's listing of the folder, taken before, and would find none for
# a step's first run (a seed's, an ablation's): "no rule to make target". This
# rule says they can exist, and .PRECIOUS that they are not intermediate files to delete.
$(WORK)/.settings/%: ;
.PRECIOUS: $(WORK)/.settings/%
fresh = scripts/fresh.sh $(WORK)/.settings/$(1) $(2) $(3)

.PHONY: help build test test-remote test-gpu-path test-gpu models bench-decode bench-sample bench-train bench-contention bench-score prompts pairs train dpo eval sweep ablation study-sweep experiment dose dose-gate study-dose study-dose-gate clean-run
.DEFAULT_GOAL := help

help: ## Show the targets and the variables to override
	@echo "WRPO pipeline. Targets:"
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | awk -F'\t' '{printf "  make %-13s %s\n", $$1, $$2}'
	@echo "Variables (current value):"
	@for v in WORK PROMPTS TARGET SOURCES REWARD N SOURCE_N TARGET_N MAX_NEW_TOKENS TEMPERATURE TOP_P SEED EVAL_FRACTION SFT_FRACTION STRATEGY ALLOW_TRUNCATED ALPHA_MAX BETA SFT_LR SFT_EPOCHS WRPO_LR EPOCHS SEEDS SWEEP_LRS ALPHAS STATIC_ALPHA ABLATION_PAIRS ABLATION_SPLIT DOSE_RUNS DOSE_SPLIT SOURCE_PLUS_BASE SOURCE_PLUS_LR SOURCE_PLUS_EPOCHS DOSE_PLUS_N FREEZE_EMBEDDINGS EVAL_SPLIT EVAL_N VALIDATION_N MAX_LENGTH JUDGE API_KEY_ENV CONCURRENCY RETRIES TIMEOUT; do \
	  printf "  %-15s %s\n" "$$v" "$$(make -s --no-print-directory print-$$v)"; done

print-%:
	@echo '$($*)'

# The examples are the benchmark drivers; building them with the binaries
# keeps one feature set, so neither build redoes the other's dependencies.
build: ## Build the three binaries (release)
	cargo build --release --workspace --bins --examples

test: models ## Run every test (the command CI runs), including the demo-model checks and a real-model smoke run of the chain
	cargo test --workspace -- --include-ignored --skip openai_server_backend --skip llama_cpp_server_judges_and_embeds
	bash scripts/check-duckdb.sh
	bash scripts/smoke.sh

test-remote: models ## Sampling, the judge and /v1/embeddings against llama-cpp-python's server on loopback (first run compiles llama.cpp, ~25 min)
	bash scripts/test-remote.sh

test-gpu-path: ## wrpo_trl (TRL, for GPUs) against wrpo-train: 3 steps, same losses, metrics and weights to 1e-4 (installs torch, TRL: GBs)
	bash scripts/test-gpu-path.sh

test-gpu: models ## On one CUDA GPU: the demo's SmolLM2 by wrpo_trl, 20 steps in bf16 under DeepSpeed ZeRO-3, against wrpo-train in f32 and bf16 (DEVICE=cpu: on the CPU)
	bash scripts/test-gpu.sh

models: ## Fetch the demo models into models/ (GGUF files and the reward's MiniLM; pinned, SHA-256 checked)
	bash scripts/fetch-models.sh

bench-decode: models ## Decode tokens/s of our quantized path against llama.cpp on SmolLM2 Q4_1 (2 threads)
	bash scripts/bench/decode.sh

bench-sample: models ## wrpo-sample generate tokens/s against llama.cpp (sequential, batched) and transformers
	bash scripts/bench/sample.sh

bench-train: models ## One WRPO step (3 x 256 tokens) of our trainer against PyTorch eager, f32 and bf16 (autocast): time and peak memory
	bash scripts/bench/train.sh

bench-contention: models ## Speed kept beside a busy process on one core: wrpo-sample and wrpo-train against llama.cpp
	bash scripts/bench/contention.sh

bench-score: models $(WORK)/source-samples/.done ## Reward-model scoring of real samples: wrpo-score against PyTorch transformers
	WORK=$(WORK) bash scripts/bench/score.sh

prompts: $(WORK)/prompts.parquet ## Import PROMPTS into WORK/prompts.parquet

pairs: $(WORK)/pairs.parquet ## Build the WRPO pairs (samples, scores, SFT, target samples)

train: $$(WRPO_DONE) ## Train the target with WRPO on the pairs (runs every step before it)

dpo: $$(DPO_DONE) ## The DPO baseline on the same pairs (chosen = y_wt)

eval: $$(EVAL_DIR)/report.md $(if $(JUDGE),$$(EVAL_DIR)/judged/report.md) ## Held-out comparison: original target, Target-SFT, WRPO, DPO (report.md, report.png); JUDGE=openai:URL#MODEL adds a judge

sweep: $(WORK)/sweep/report.md ## Choose the learning rate on the validation split: DPO and WRPO per rate in SWEEP_LRS, against Target-SFT

ablation: $(WORK)/ablation/report.md ## The alpha ablation: WRPO per alpha_max in ALPHAS and static alpha, against Target-SFT (sweep.png)

# The evidence study (docs/results.md): the chain on the study's prompt set, WRPO and
# DPO per training seed on the test split, then the alpha ablation on a subsample
# of the pairs, answered on the validation split. Override the STUDY_* variables
# (and any other but the ones STUDY sets from them, which are refused) as usual.
STUDY_WORK ?= runs/study
STUDY_PROMPTS ?= data/study/prompts.jsonl
STUDY_SEEDS ?= 1 2
# y_ws is the best of 8 source samples against y_wt's best of 2 (docs/results.md says why).
STUDY_SOURCE_N ?= 8
STUDY_TARGET_N ?= 2
STUDY_FREEZE_EMBEDDINGS ?= 1
# The learning rate `make study-sweep` chose on the validation split for both DPO and
# WRPO (the larger mean gain over Target-SFT of the two; docs/results.md).
STUDY_LR ?= 5e-6
# The ablation gets what is left of a 150-minute run on 2 cores: 100 pairs (25 steps)
# per alpha. The sweep and the ablation answer each validation prompt twice.
STUDY_ABLATION_PAIRS ?= 100
STUDY_VALIDATION_N ?= 2
# Every study target passes all of these to every call: each make call rewrites the settings
# stamp of every step for the values it was given, so a variable set in one call only (EVAL_N
# for the validation runs, as before) made another call's finished steps look stale, and the
# next `make experiment` answered the test split again.
STUDY = WORK=$(STUDY_WORK) PROMPTS=$(STUDY_PROMPTS) SEEDS="$(STUDY_SEEDS)" SOURCE_N=$(STUDY_SOURCE_N) \
  TARGET_N=$(STUDY_TARGET_N) FREEZE_EMBEDDINGS=$(STUDY_FREEZE_EMBEDDINGS) WRPO_LR=$(STUDY_LR) \
  VALIDATION_N=$(STUDY_VALIDATION_N) ABLATION_PAIRS=$(STUDY_ABLATION_PAIRS) ABLATION_SPLIT=validation
# Given on a study target's command line, a variable STUDY sets would be silently replaced.
study_var = $(if $(filter command line,$(origin $(1))),$(error make $(filter experiment study-%,$(MAKECMDGOALS)) sets $(1) \
  $(if $(2),from $(2) ($($(2))),itself (the study's design)), so $(1)=$($(1)) would be ignored$(if $(2),: pass $(2)=... instead)))
ifneq ($(filter experiment study-%,$(MAKECMDGOALS)),)
$(foreach v,WORK:STUDY_WORK PROMPTS:STUDY_PROMPTS SEEDS:STUDY_SEEDS SOURCE_N:STUDY_SOURCE_N TARGET_N:STUDY_TARGET_N \
  FREEZE_EMBEDDINGS:STUDY_FREEZE_EMBEDDINGS WRPO_LR:STUDY_LR VALIDATION_N:STUDY_VALIDATION_N \
  ABLATION_PAIRS:STUDY_ABLATION_PAIRS ABLATION_SPLIT:,$(call study_var,$(word 1,$(subst :, ,$(v))),$(word 2,$(subst :, ,$(v)))))
endif
study-sweep: ## The study's learning-rate sweep on the validation split (run before `make experiment`; STUDY_WORK)
	$(MAKE) --no-print-directory sweep $(STUDY)

study-dose-gate: ## The gate of the study's dose-response: the stronger source's y_ws against y_wt on training pairs
	$(MAKE) --no-print-directory dose-gate $(STUDY)

study-dose: ## The study's dose-response (Evidence II): DOSE_SPLIT=validation first (the dress rehearsal), then DOSE_SPLIT=eval
	$(MAKE) --no-print-directory dose $(STUDY)

experiment: ## The evidence study: data/study prompts, WRPO and DPO per seed, alpha ablation, paired report (STUDY_WORK; hours)
	$(MAKE) --no-print-directory eval $(STUDY)
	$(MAKE) --no-print-directory ablation $(STUDY)

# Evidence II, the dose-response (docs/results.md): WRPO's gain against what its source
# brings. Levels of source strength share Target-SFT, y_wt and y_l; only y_ws changes:
#   Lminus  the first eligible source sample of each prompt (best of 1): a weaker source, no sampling;
#   L0      the chain's own y_ws (best of SOURCE_N);
#   Lplus   a stronger source: SOURCE_PLUS_BASE fine-tuned on the reference answers of the SFT
#           third's prompts (wrpo-score reference-set refuses any preference, validation or
#           test prompt), sampled DOSE_PLUS_N times per preference prompt.
# Each run of DOSE_RUNS is LEVEL/ARM-seedS, ARM being wrpo (alpha_max ALPHA_MAX), dpo-ws (DPO with
# chosen = y_ws, the static alpha = 1 endpoint) or wrpo-alphaA (alpha_max A); L0's WRPO runs are
# the chain's own (WORK/wrpo-seedS), and DPO on y_wt (the chain's dpo) is every arm's baseline.
# The runs answer DOSE_SPLIT (validation: the dress rehearsal, every model answered here; eval:
# the test split, the chain's own models taken from WORK/eval) into WORK/dose/SPLIT, and
# `wrpo-score dose` writes dose.md, dose.png and the slopes there.
DOSE_RUNS ?= Lminus/wrpo-seed1 Lminus/dpo-ws-seed1 L0/dpo-ws-seed1 Lplus/wrpo-seed1 Lplus/wrpo-seed2 Lplus/dpo-ws-seed1 \
  Lplus/wrpo-alpha1-seed1
DOSE_SPLIT ?= validation
SOURCE_PLUS_BASE ?= $(firstword $(SOURCE_FILES))
SOURCE_PLUS_LR ?= 5e-5
SOURCE_PLUS_EPOCHS ?= 3
DOSE_PLUS_N ?= $(SOURCE_N)
DOSE = $(WORK)/dose
# A run LEVEL/ARM-seedS: its level, arm and seed; the loss arguments of an arm.
dose_level = $(firstword $(subst /, ,$(1)))
dose_arm = $(firstword $(subst -seed, ,$(lastword $(subst /, ,$(1)))))
dose_seed = $(lastword $(subst -seed, ,$(1)))
dose_loss = $(if $(filter dpo-ws,$(1)),--loss dpo --dpo-chosen source,$(if $(filter wrpo-alpha%,$(1)),--alpha-max $(patsubst wrpo-alpha%,%,$(1)),$(WRPO_ARGS)))
# A level's pairs, with the reference's log-probs: L0's are the chain's.
dose_pairs = $(if $(filter L0,$(1)),$(WORK)/pairs,$(DOSE)/$(1)/pairs)
# A run's eval alias ARM-LEVEL@SEED; the report pools the seeds of ARM-LEVEL.
dose_alias = $(call dose_arm,$(1))-$(call dose_level,$(1))@$(call dose_seed,$(1))
DOSE_LEVEL_NAMES = $(sort L0 $(foreach r,$(DOSE_RUNS),$(call dose_level,$(r))))
DOSE_MAIN_MODELS = $(call run_models,wrpo) $(call run_models,dpo)
DOSE_EVAL_DIR = $(DOSE)/$(if $(filter validation,$(DOSE_SPLIT)),validation,eval)
DOSE_MODELS = $(foreach r,$(DOSE_RUNS),$(call dose_alias,$(r))=$(DOSE)/$(r)/final) $(if $(filter validation,$(DOSE_SPLIT)),$(DOSE_MAIN_MODELS))

dose: $$(DOSE_EVAL_DIR)/dose.md ## The dose-response: WRPO and DPO on y_ws per level of source strength (Lminus, L0, Lplus) against DPO on y_wt (dose.png)

dose-gate: $(DOSE)/Lplus/pairs.parquet ## The stronger source's training pairs: how often and by how much its y_ws beats y_wt
	@echo "Lplus y_ws against y_wt on the training pairs ($(DOSE)/Lplus/pairs.summary.json):"
	@grep -A 7 '"all"' $(DOSE)/Lplus/pairs.summary.json

# The stronger source's training set and the source fine-tuned on it.
$(DOSE)/source-plus-set.parquet: $(WORK)/sft.parquet $(WORK)/preference-prompts.parquet | $(BUILD)
	$(call need,$(SCORE))
	@mkdir -p $(@D)
	$(SCORE) reference-set --prompts $(WORK)/prompts.parquet --sft $< --preference $(WORK)/preference-prompts.parquet --out $@

$(DOSE)/source-plus/.done: $(DOSE)/source-plus-set.parquet $(call model_files,$(SOURCE_PLUS_BASE)) \
  $$(call settings,source-plus,$$(SOURCE_PLUS_BASE) $$(SOURCE_PLUS_LR) $$(SOURCE_PLUS_EPOCHS) $$(LENGTHS) $$(SEED)) | $(BUILD)
	$(call need,$(TRAIN))
	$(call fresh,source-plus,$(@D),$@)
	$(TIMED) source-plus $(TRAIN) sft --model $(SOURCE_PLUS_BASE) --data $< --out $(@D) --lr $(SOURCE_PLUS_LR) --epochs $(SOURCE_PLUS_EPOCHS) \
	  --micro-batch 4 --grad-accum 1 --warmup-ratio 0.1 $(LENGTHS) --seed $(SEED)
	touch $@

$(DOSE)/Lplus/source-samples/.done: $(DOSE)/source-plus/.done $(WORK)/preference-prompts.parquet $$(call settings,Lplus-samples,--n $$(DOSE_PLUS_N) $$(SAMPLING)) | $(BUILD)
	$(call need,$(SAMPLE))
	$(call fresh,Lplus-samples,$(@D),$@)
	$(TIMED) Lplus-samples $(SAMPLE) generate --prompts $(WORK)/preference-prompts.parquet --model source-plus=$(DOSE)/source-plus/final \
	  --n $(DOSE_PLUS_N) $(SAMPLING) $(REMOTE) --out $(@D)
	touch $@

$(DOSE)/Lplus/source-scores/.done: $(DOSE)/Lplus/source-samples/.done $$(call settings,Lplus-scores,$$(REWARD)) | $(BUILD)
	$(call need,$(SCORE))
	$(call fresh,Lplus-scores,$(@D),$@)
	$(TIMED) Lplus-scores $(SCORE) score --prompts $(WORK)/preference-prompts.parquet --samples $(<D) --reward $(REWARD) $(REMOTE) --out $(@D)
	touch $@

# Each level's pairs: the chain's preference prompts, y_wt and y_l, and the level's y_ws.
DOSE_PAIRING = --prompts $(WORK)/preference-prompts.parquet --target-scores $(WORK)/target-scores $(if $(ALLOW_TRUNCATED),--allow-truncated)
$(DOSE)/Lminus/pairs.parquet: $(WORK)/source-scores/.done $(WORK)/target-scores/.done $(WORK)/preference-prompts.parquet \
  $$(call settings,Lminus-pairs,$$(ALLOW_TRUNCATED)) | $(BUILD)
	$(call need,$(SCORE))
	@mkdir -p $(@D)
	$(TIMED) Lminus-pairs $(SCORE) pairs $(DOSE_PAIRING) --source-scores $(WORK)/source-scores --source-best-of 1 --out $@

$(DOSE)/Lplus/pairs.parquet: $(DOSE)/Lplus/source-scores/.done $(WORK)/target-scores/.done $(WORK)/preference-prompts.parquet \
  $$(call settings,Lplus-pairs,$$(ALLOW_TRUNCATED)) | $(BUILD)
	$(call need,$(SCORE))
	$(TIMED) Lplus-pairs $(SCORE) pairs $(DOSE_PAIRING) --source-scores $(DOSE)/Lplus/source-scores --out $@

$(DOSE)/%/pairs-ref.parquet: $(DOSE)/%/pairs.parquet $(WORK)/target-sft/.done $$(call settings,$$*-ref-logps,$$(LENGTHS)) | $(BUILD)
	$(call need,$(TRAIN))
	$(TIMED) $*-ref-logps $(TRAIN) ref-logps --model $(WORK)/target-sft/final --pairs $< --out $@ $(LENGTHS)

# A pattern rule's target that only another rule needs is intermediate, and make would delete it.
.PRECIOUS: $(DOSE)/%/pairs-ref.parquet

# One run of DOSE_RUNS, LEVEL/ARM-seedS, from Target-SFT on the level's pairs.
$(DOSE)/%/.done: $$(call dose_pairs,$$(call dose_level,$$*))-ref.parquet \
  $$(call settings,dose-$$(subst /,-,$$*),$$(WRPO_LR) $$(ALPHA_MAX) $$(BETA) $$(EPOCHS) $$(TRAINING_STEPS)) | $(BUILD)
	$(call train_preference,dose-$(subst /,-,$*),$(call dose_loss,$(call dose_arm,$*)),$(call dose_seed,$*),,$<)

DOSE_ARMS = $(addprefix --arm ,L0:wrpo=wrpo $(sort $(foreach r,$(DOSE_RUNS),$(call dose_level,$(r)):$(call dose_arm,$(r))=$(call dose_arm,$(r))-$(call dose_level,$(r)))))
$(DOSE_EVAL_DIR)/dose.md: $$(foreach r,$$(DOSE_RUNS),$$(DOSE)/$$(r)/.done) $$(WRPO_DONE) $$(DPO_DONE) $(if $(filter validation,$(DOSE_SPLIT)),,$$(EVAL_DIR)/report.md) \
  $$(call settings,dose-$$(DOSE_SPLIT),$$(call answering,$$(DOSE_SPLIT)) $$(SEEDS) $$(DOSE_RUNS)) | $(BUILD)
	$(call need,$(SAMPLE))
	$(call fresh,dose-$(DOSE_SPLIT),$(@D),$@)
	$(call answer,$(DOSE_MODELS),$(DOSE_SPLIT))
	$(SCORE) dose --prompts $(WORK)/prompts.parquet --scores $(@D)/scores $(if $(filter validation,$(DOSE_SPLIT)),,--scores $(EVAL_DIR)/scores) \
	  --baseline dpo $(foreach l,$(DOSE_LEVEL_NAMES),--level $(l)=$(call dose_pairs,$(l)).parquet) $(DOSE_ARMS) --out $(@D)

clean-run: ## Delete WORK
	rm -rf $(WORK)

# The prompts file by name and content: another file, or the same one put back at an older
# version (an older mtime), is not "up to date".
$(WORK)/prompts.parquet: $(PROMPTS) $$(call settings,prompts,$$(EVAL_FRACTION) $$(SEED)) \
  $$(call settings,prompts-file,$$(PROMPTS) $$(shell sha256sum < $$(PROMPTS) 2>/dev/null | cut -c1-16)) | $(BUILD)
	$(call need,$(SAMPLE))
	$(TIMED) import $(SAMPLE) import --input $< --out $@ --reference-column reference --eval-fraction $(EVAL_FRACTION) --seed $(SEED)

# The demo models are fetched on first use; other model paths must exist.
DEMO_MODELS := models/smollm2-135m-instruct-q4_1.gguf models/gemma-3-270m-q4_k_m.gguf models/all-minilm-l6-v2
SOURCE_FILES := $(foreach s,$(SOURCES),$(lastword $(subst =, ,$(s))))
REWARD_FILES := $(lastword $(subst :, ,$(REWARD)))
# A step depends on its model files: the demo ones (fetched if missing) and any other that exists
# (a server URL is not a file).
model_files = $(filter $(DEMO_MODELS),$(1)) $(filter-out $(DEMO_MODELS),$(wildcard $(1)))
# One recipe makes all three (a grouped target), so `make -j` runs the fetch once.
$(DEMO_MODELS) &:
	bash scripts/fetch-models.sh

# 1. N samples per train prompt from every source model.
$(WORK)/source-samples/.done: $(WORK)/prompts.parquet $(call model_files,$(SOURCE_FILES)) $$(call settings,source-samples,$$(SOURCES) --n $$(SOURCE_N) $$(SAMPLING) $$(LIMIT)) | $(BUILD)
	$(call need,$(SAMPLE))
	$(call fresh,source-samples,$(@D),$@)
	$(TIMED) source-samples $(SAMPLE) generate --prompts $< $(addprefix --model ,$(SOURCES)) --split train $(if $(LIMIT),--limit $(LIMIT)) --n $(SOURCE_N) $(SAMPLING) $(REMOTE) --out $(@D)
	touch $@

# 2. Every source sample scored by the reward model.
$(WORK)/source-scores/.done: $(WORK)/source-samples/.done $(call model_files,$(REWARD_FILES)) $$(call settings,source-scores,$$(REWARD)) | $(BUILD)
	$(call need,$(SCORE))
	$(call fresh,source-scores,$(@D),$@)
	$(TIMED) source-scores $(SCORE) score --prompts $(WORK)/prompts.parquet --samples $(<D) --reward $(REWARD) $(REMOTE) --out $(@D)
	touch $@

# 3-4. y_ws per prompt; SFT third and preference two thirds.
$(WORK)/sft.parquet $(WORK)/preference-prompts.parquet &: $(WORK)/source-scores/.done $$(call settings,sft-set,$$(SFT_FRACTION) $$(SEED) $$(ALLOW_TRUNCATED)) | $(BUILD)
	$(call need,$(SCORE))
	$(TIMED) sft-set $(SCORE) sft-set --prompts $(WORK)/prompts.parquet --source-scores $(<D) --sft-fraction $(SFT_FRACTION) \
	  --seed $(SEED) $(if $(ALLOW_TRUNCATED),--allow-truncated) --out $(WORK)/sft.parquet --out-preference $(WORK)/preference-prompts.parquet

# 5. Target-SFT: the target fine-tuned on (x, y_ws).
$(WORK)/target-sft/.done: $(WORK)/sft.parquet $(call model_files,$(TARGET)) $$(call settings,target-sft,$$(TARGET) $$(SFT_LR) $$(SFT_EPOCHS) $$(LENGTHS) $$(SEED)) | $(BUILD)
	$(call need,$(TRAIN))
	$(call fresh,target-sft,$(@D),$@)
	$(TIMED) sft $(TRAIN) sft --model $(TARGET) --data $< --out $(@D) --lr $(SFT_LR) --epochs $(SFT_EPOCHS) --micro-batch 4 --grad-accum 1 --warmup-ratio 0.1 $(LENGTHS) --seed $(SEED)
	touch $@

# 6. N samples per preference prompt from Target-SFT, scored.
$(WORK)/target-samples/.done: $(WORK)/target-sft/.done $(WORK)/preference-prompts.parquet $$(call settings,target-samples,--n $$(TARGET_N) $$(SAMPLING)) | $(BUILD)
	$(call need,$(SAMPLE))
	$(call fresh,target-samples,$(@D),$@)
	$(TIMED) target-samples $(SAMPLE) generate --prompts $(WORK)/preference-prompts.parquet --model target-sft=$(WORK)/target-sft/final --n $(TARGET_N) $(SAMPLING) $(REMOTE) --out $(@D)
	touch $@

$(WORK)/target-scores/.done: $(WORK)/target-samples/.done $$(call settings,target-scores,$$(REWARD)) | $(BUILD)
	$(call need,$(SCORE))
	$(call fresh,target-scores,$(@D),$@)
	$(TIMED) target-scores $(SCORE) score --prompts $(WORK)/preference-prompts.parquet --samples $(<D) --reward $(REWARD) $(REMOTE) --out $(@D)
	touch $@

# 7-8. (x, y_ws, y_wt, y_l).
$(WORK)/pairs.parquet: $(WORK)/source-scores/.done $(WORK)/target-scores/.done $(WORK)/preference-prompts.parquet $$(call settings,pairs,$$(STRATEGY) $$(ALLOW_TRUNCATED)) | $(BUILD)
	$(call need,$(SCORE))
	$(TIMED) pairs $(SCORE) pairs --prompts $(WORK)/preference-prompts.parquet --source-scores $(WORK)/source-scores \
	  --target-scores $(WORK)/target-scores --strategy $(STRATEGY) $(if $(ALLOW_TRUNCATED),--allow-truncated) --out $@

# 9. The frozen reference's (Target-SFT's) log-probs of every response, once.
$(WORK)/pairs-ref.parquet: $(WORK)/pairs.parquet $(WORK)/target-sft/.done $$(call settings,ref-logps,$$(LENGTHS)) | $(BUILD)
	$(call need,$(TRAIN))
	$(TIMED) ref-logps $(TRAIN) ref-logps --model $(WORK)/target-sft/final --pairs $< --out $@ $(LENGTHS)

# 10. WRPO from Target-SFT on the pairs; DPO on the same pairs as the baseline.
$(WORK)/wrpo/.done: $(WORK)/pairs-ref.parquet $$(call settings,wrpo,$$(WRPO_LR) $$(ALPHA_MAX) $$(BETA) $$(EPOCHS) $$(TRAINING)) | $(BUILD)
	$(call train_preference,wrpo,$(WRPO_ARGS),$(SEED))
	@echo "stage times (s), also in $(WORK)/timings.csv:"; column -s, -t $(WORK)/timings.csv

$(WORK)/dpo/.done: $(WORK)/pairs-ref.parquet $$(call settings,dpo,$$(WRPO_LR) $$(BETA) $$(EPOCHS) $$(TRAINING)) | $(BUILD)
	$(call train_preference,dpo,$(DPO_ARGS),$(SEED))

# One run per training seed of SEEDS.
$(WORK)/wrpo-seed%/.done: $(WORK)/pairs-ref.parquet $$(call settings,wrpo-seed$$*,$$(WRPO_LR) $$(ALPHA_MAX) $$(BETA) $$(EPOCHS) $$(TRAINING_STEPS)) | $(BUILD)
	$(call train_preference,wrpo-seed$*,$(WRPO_ARGS),$*)

$(WORK)/wrpo-alpha%/.done: $(WORK)/pairs-ref.parquet $$(call settings,wrpo-alpha$$*,$$(WRPO_LR) $$(BETA) $$(EPOCHS) $$(TRAINING_STEPS) $$(FIRST_SEED) $$(SUBSAMPLE)) | $(BUILD)
	$(call train_preference,wrpo-alpha$*,--alpha-max $* $(SUBSAMPLE),$(FIRST_SEED))

$(WORK)/wrpo-static%/.done: $(WORK)/pairs-ref.parquet $$(call settings,wrpo-static$$*,$$(WRPO_LR) $$(BETA) $$(EPOCHS) $$(TRAINING_STEPS) $$(FIRST_SEED) $$(SUBSAMPLE)) | $(BUILD)
	$(call train_preference,wrpo-static$*,--alpha-max $* --static-alpha $(SUBSAMPLE),$(FIRST_SEED))

$(WORK)/dpo-seed%/.done: $(WORK)/pairs-ref.parquet $$(call settings,dpo-seed$$*,$$(WRPO_LR) $$(BETA) $$(EPOCHS) $$(TRAINING_STEPS)) | $(BUILD)
	$(call train_preference,dpo-seed$*,$(DPO_ARGS),$*)

# 11. The held-out prompts answered by the original target, Target-SFT, the WRPO
# model and the DPO model (same sampling settings and, sample by sample, the
# same seeds), scored with the training reward, and compared: each with the
# original target, and in pairs per prompt (SFT - target, DPO - SFT, WRPO - SFT,
# WRPO - DPO).
# Each run's final checkpoint as an eval alias: wrpo, or wrpo@SEED per seed.
run_models = $(if $(SEEDS),$(foreach s,$(SEEDS),$(1)@$(s)=$(WORK)/$(1)-seed$(s)/final),$(1)=$(WORK)/$(1)/final)
EVAL_MODELS = target=$(TARGET) target-sft=$(WORK)/target-sft/final $(call run_models,wrpo) $(call run_models,dpo)
# Each training seed's own WRPO - DPO, beside the pooled one.
SEED_COMPARE = $(foreach s,$(SEEDS),--compare wrpo@$(s):dpo@$(s))
# $(call answer,MODELS,SPLIT): MODELS answer SPLIT's prompts EVAL_N times each
# (VALIDATION_N on the validation split; the same seeds sample by sample), scored
# with the training reward, into $(@D).
define answer
$(TIMED) $(notdir $(@D))-samples $(SAMPLE) generate --prompts $(WORK)/prompts.parquet --split $(2) $(if $(EVAL_LIMIT),--limit $(EVAL_LIMIT)) $(addprefix --model ,$(1)) \
  --n $(call answers_n,$(2)) --max-new-tokens $(MAX_NEW_TOKENS) --temperature $(TEMPERATURE) --top-p $(TOP_P) --seed $(SEED) --common-random-numbers $(REMOTE) --out $(@D)/samples
$(TIMED) $(notdir $(@D))-scores $(SCORE) score --prompts $(WORK)/prompts.parquet --samples $(@D)/samples --reward $(REWARD) $(REMOTE) --out $(@D)/scores
endef
answers_n = $(if $(filter validation,$(1)),$(VALIDATION_N),$(EVAL_N))
# $(call answering,SPLIT): the settings of answering SPLIT.
answering = $(EVAL_LIMIT) $(call answers_n,$(1)) $(MAX_NEW_TOKENS) $(TEMPERATURE) $(TOP_P) $(SEED) $(REWARD) crn
$(EVAL_DIR)/report.md: $$(WRPO_DONE) $$(DPO_DONE) $$(call settings,$$(notdir $$(EVAL_DIR)),$$(call answering,$$(EVAL_SPLIT)) $$(SEEDS)) | $(BUILD)
	$(call need,$(SAMPLE))
	$(call fresh,$(notdir $(@D)),$(@D),$@)
	$(call answer,$(EVAL_MODELS),$(EVAL_SPLIT))
	$(SCORE) report $(EVAL_REPORT) --out $(@D)

EVAL_REPORT = --prompts $(WORK)/prompts.parquet --scores $(EVAL_DIR)/scores --baseline target --order target,target-sft,dpo,wrpo \
  --compare target-sft:target --compare dpo:target-sft --compare wrpo:target-sft --compare wrpo:dpo $(SEED_COMPARE)
# The same report with the judge's verdicts: every model against the original
# target, each prompt's answers in both orders (verdicts kept in
# judgements.parquet, so an interrupted run resumes).
$(EVAL_DIR)/judged/report.md: $(EVAL_DIR)/report.md $$(call settings,$$(notdir $$(EVAL_DIR))-judged,$$(JUDGE))
	$(SCORE) report $(EVAL_REPORT) --judge $(JUDGE) $(REMOTE) --out $(@D)

# The learning rate chosen on the validation split (`make sweep`): DPO and WRPO once
# per rate in SWEEP_LRS, the first training seed, every pair, answered on the
# validation prompts; each against Target-SFT, and WRPO against DPO per rate. At
# WRPO_LR the runs are the first seed's main ones (WORK/wrpo-seed1, ...), trained once.
SWEEP_LRS ?= 2e-6 5e-6
sweep_run = $(if $(filter $(2),$(WRPO_LR)),$(firstword $(call run_dirs,$(1))),$(WORK)/$(1)-lr$(2))
SWEEP_MODELS = target-sft=$(WORK)/target-sft/final $(foreach r,$(SWEEP_LRS),dpo-lr$(r)=$(call sweep_run,dpo,$(r))/final wrpo-lr$(r)=$(call sweep_run,wrpo,$(r))/final)
$(WORK)/sweep/report.md: $$(foreach r,$$(SWEEP_LRS),$$(call sweep_run,dpo,$$(r))/.done $$(call sweep_run,wrpo,$$(r))/.done) \
  $$(call settings,sweep,$$(call answering,validation) $$(SEEDS) $$(SWEEP_LRS)) | $(BUILD)
	$(call need,$(SAMPLE))
	$(call fresh,sweep,$(@D),$@)
	$(call answer,$(SWEEP_MODELS),validation)
	$(SCORE) report --prompts $(WORK)/prompts.parquet --scores $(@D)/scores --baseline target-sft \
	  $(foreach r,$(SWEEP_LRS),--compare dpo-lr$(r):target-sft --compare wrpo-lr$(r):target-sft --compare wrpo-lr$(r):dpo-lr$(r)) --out $(@D)

$(WORK)/wrpo-lr%/.done: $(WORK)/pairs-ref.parquet $$(call settings,wrpo-lr$$*,$$(ALPHA_MAX) $$(BETA) $$(EPOCHS) $$(TRAINING_STEPS) $$(FIRST_SEED)) | $(BUILD)
	$(call train_preference,wrpo-lr$*,$(WRPO_ARGS),$(FIRST_SEED),$*)

$(WORK)/dpo-lr%/.done: $(WORK)/pairs-ref.parquet $$(call settings,dpo-lr$$*,$$(BETA) $$(EPOCHS) $$(TRAINING_STEPS) $$(FIRST_SEED)) | $(BUILD)
	$(call train_preference,dpo-lr$*,$(DPO_ARGS),$(FIRST_SEED),$*)

ABLATION_MODELS = $(foreach a,$(ALPHAS),alpha$(a)=$(call alpha_dir,$(a))/final) $(if $(STATIC_ALPHA),static$(STATIC_ALPHA)=$(WORK)/wrpo-static$(STATIC_ALPHA)/final)
STATIC_AGAINST = $(if $(filter $(STATIC_ALPHA),$(ALPHAS)),alpha$(STATIC_ALPHA),target-sft)
$(WORK)/ablation/report.md: $$(ABLATION_DONE) $$(call settings,ablation,$$(call answering,$$(ABLATION_SPLIT)) $$(ABLATION_SPLIT) $$(SEEDS) $$(ALPHAS) $$(STATIC_ALPHA) $$(ABLATION_PAIRS)) | $(BUILD)
	$(call need,$(SAMPLE))
	$(call fresh,ablation,$(@D),$@)
	$(call answer,target-sft=$(WORK)/target-sft/final $(ABLATION_MODELS),$(ABLATION_SPLIT))
	$(SCORE) report --prompts $(WORK)/prompts.parquet --scores $(@D)/scores --baseline target-sft \
	  $(foreach a,$(ALPHAS),--compare alpha$(a):target-sft --sweep alpha$(a)=$(a)) --sweep-label alpha_max \
	  $(if $(STATIC_ALPHA),--compare static$(STATIC_ALPHA):$(STATIC_AGAINST)) --out $(@D)
