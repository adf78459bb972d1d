"""Our pairs as the token ids `wrpo-train` trains on (docs/method.md, "Tokens").

Prompt ids: the chat template applied to the messages with the generation
prompt, tokenized without special tokens (as apply_chat_template does).
Response ids: the response as the template renders the assistant's turn after
those messages (Llama-3's and Gemma's templates trim it), tokenized without
special tokens, then the one end-of-turn token at which sampling stops.
Truncation, as the official trainer's `tokenize_row`: when the prompt plus the
longest response of the example exceeds `max_length`, the prompt keeps its last
`max_prompt_length` tokens; if that is still too long, every response of the
example is cut to `max_length - max_prompt_length`.
"""
import json
from pathlib import Path

import pyarrow.parquet as pq
from datasets import Dataset

# End-of-turn tokens of the chat formats we know, in order of preference (as wrpo-train's encoder).
END_OF_TURN = ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|end|>")
RESPONSES = ("y_ws", "y_wt", "y_l")


def read_rows(path):
    """Rows of a pairs file: our `pairs` Parquet, or `wrpo-score export --format wrpo`
    (Parquet or JSON lines: `prompt`, `chosen` = [y_ws, y_wt], `rejected` = [y_l]),
    as dicts with `prompt_id`, `messages`, `y_ws`, `y_wt`, `y_l` and, where the file
    has them, `ref_logp_*` and `ref_tokens_*`."""
    path = Path(path)
    if path.suffix == ".parquet":
        rows = pq.read_table(path).to_pylist()
    elif path.suffix in (".jsonl", ".json"):
        with open(path) as f:
            rows = [json.loads(line) for line in f if line.strip()]
    else:
        raise ValueError(f"{path}: expected a .parquet or .jsonl pairs file")
    out = []
    for i, row in enumerate(rows):
        if "messages" in row:
            missing = [c for c in ("prompt_id", "y_ws", "y_wt", "y_l") if c not in row]
        elif "prompt" in row and "chosen" in row:
            if len(row["chosen"]) != 2 or len(row["rejected"]) != 1:
                raise ValueError(f"{path}: row {i}: a wrpo export has chosen = [y_ws, y_wt] and rejected = [y_l]")
            row = {
                "prompt_id": row.get("prompt_id", str(i)),
                "messages": row["prompt"],
                "y_ws": row["chosen"][0]["content"],
                "y_wt": row["chosen"][1]["content"],
                "y_l": row["rejected"][0]["content"],
            }
            missing = []
        else:
            missing = ["messages (our pairs) or prompt/chosen/rejected (the wrpo export)"]
        if missing:
            raise ValueError(f"{path}: row {i}: column(s) {', '.join(missing)} missing")
        out.append(row)
    return out


def end_of_turn_id(tokenizer):
    """The token the template writes after an assistant turn, else EOS."""
    vocab = tokenizer.get_vocab()
    template = tokenizer.chat_template or ""
    for token in END_OF_TURN:
        if token in template and token in vocab:
            return vocab[token]
    if tokenizer.eos_token_id is None:
        raise ValueError(f"the tokenizer has neither an end-of-turn token ({', '.join(END_OF_TURN)}) nor EOS")
    return tokenizer.eos_token_id


def truncate(prompt, responses, max_length, max_prompt_length):
    """The official trainer's rule: the longest response decides for the whole example."""
    longest = max(len(r) for r in responses.values())
    if len(prompt) + longest > max_length:
        prompt = prompt[-max_prompt_length:]
        if len(prompt) + longest > max_length:
            responses = {y: r[: max_length - max_prompt_length] for y, r in responses.items()}
    return prompt, responses


class Encoder:
    def __init__(self, tokenizer, max_length, max_prompt_length):
        if max_prompt_length >= max_length:
            raise ValueError(f"max_prompt_length ({max_prompt_length}) must be below max_length ({max_length})")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.max_prompt_length = max_prompt_length
        self.end_of_turn = end_of_turn_id(tokenizer)
        self.end_of_turn_text = tokenizer.convert_ids_to_tokens(self.end_of_turn)

    def render(self, messages, generation_prompt):
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)

    def ids(self, text):
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def prompt_ids(self, messages):
        return self.ids(self.render(messages, True))

    def response_ids(self, messages, response):
        if not response.strip():
            raise ValueError("the response is empty")
        prompt = self.render(messages, True)
        full = self.render(list(messages) + [{"role": "assistant", "content": response}], False)
        text = response
        if full.startswith(prompt):
            end = full[len(prompt):].rfind(self.end_of_turn_text)
            if end >= 0:
                text = full[len(prompt):][:end]
        return self.ids(text) + [self.end_of_turn]

    def encode(self, row, where):
        """A pair's ids, truncated: `prompt_ids` and `<y>_ids` for y_ws, y_wt, y_l,
        and the reference log-probs it carries. A recorded reference token count
        that differs from these ids is refused, as `wrpo-train wrpo` refuses it."""
        prompt = self.prompt_ids(row["messages"])
        responses = {}
        for y in RESPONSES:
            try:
                responses[y] = self.response_ids(row["messages"], row[y])
            except ValueError as e:
                raise ValueError(f"{where} (prompt {row['prompt_id']}): {y}: {e}") from None
        prompt, responses = truncate(prompt, responses, self.max_length, self.max_prompt_length)
        out = {"prompt_id": row["prompt_id"], "prompt_ids": prompt}
        for y, response in responses.items():
            recorded = row.get(f"ref_tokens_{y}")
            if recorded is not None and recorded != len(response):
                raise ValueError(
                    f"{where} (prompt {row['prompt_id']}): column 'ref_tokens_{y}' says the reference log-prob summed "
                    f"{recorded} tokens, this tokenization and truncation give {len(response)}: compute the reference "
                    f"log-probs with this model, max_length and max_prompt_length"
                )
            out[f"{y}_ids"] = response
        refs = [row.get(f"ref_logp_{y}") for y in RESPONSES]
        if all(r is not None for r in refs):
            for y, r in zip(RESPONSES, refs):
                out[f"ref_logp_{y}"] = float(r)
        return out


def encode_pairs(rows, tokenizer, max_length, max_prompt_length, name):
    """Pair rows (`read_rows`' dicts, or a dataset of our pairs' columns) as the
    tokenized `datasets.Dataset` WRPOTrainer trains on; `name` names them in errors."""
    encoder = Encoder(tokenizer, max_length, max_prompt_length)
    rows = [encoder.encode(row, f"{name}: row {i}") for i, row in enumerate(rows)]
    with_refs = sum("ref_logp_y_l" in r for r in rows)
    if 0 < with_refs < len(rows):
        raise ValueError(f"{name}: {with_refs} of {len(rows)} rows have reference log-probs; all or none must")
    return Dataset.from_list(rows)


def load_pairs(path, tokenizer, max_length, max_prompt_length):
    """A pairs file as the tokenized `datasets.Dataset` WRPOTrainer trains on."""
    return encode_pairs(read_rows(path), tokenizer, max_length, max_prompt_length, str(path))
