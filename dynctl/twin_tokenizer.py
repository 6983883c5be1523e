"""Write a tokenizer-only model directory for Dynamo's mocker: `python twin_tokenizer.py OUT_DIR`.

Runs inside the twin's venv (it needs `tokenizers`, which the project venv does not have). The mocker
simulates the engine and only tokenizes, so a small byte-level BPE trained on a few sentences is
enough: any text encodes (byte fallback), and nothing is downloaded.
"""

import json
import sys
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

SPECIAL = ["<|bos|>", "<|eos|>", "<|pad|>"]
# Covers the ids the mocker generates (1000-1999 in ai-dynamo 1.6.1), with room to spare.
VOCAB_SIZE = 4096
# Training text only shapes the merges; its content does not matter.
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Dynamo serves large language models with KV-aware routing across workers.",
    "Hello world! What is the capital of France? Tell me a story about a cache.",
    "user: assistant: system: 0123456789 {}[]()<>,.;:!?'\"-_/\\@#$%^&*+=~`|",
] * 20
CHAT_TEMPLATE = (
    "{% for m in messages %}<|bos|>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|bos|>assistant: {% endif %}"
)


def _padded(trained: Tokenizer) -> Tokenizer:
    """The trained BPE with its vocabulary filled up to VOCAB_SIZE ids.

    The mocker answers with random token ids above our small trained vocabulary; ids the tokenizer
    does not know decode to nothing, and every answer would be empty. The filler tokens decode to
    " tok<id>" and no merge produces them, so prompts tokenize exactly as with the trained BPE.
    """
    model = json.loads(trained.to_str())["model"]
    vocab = dict(model["vocab"])
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    for i in range(len(vocab), VOCAB_SIZE):
        vocab[f"\u0120tok{i}"] = i  # \u0120 is the byte-level alphabet's space
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = trained.pre_tokenizer
    tok.decoder = trained.decoder
    tok.post_processor = trained.post_processor
    return tok


def build(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=1024, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    tok = _padded(tok)
    tok.add_special_tokens(SPECIAL)
    tok.save(str(out / "tokenizer.json"))
    vocab = tok.get_vocab_size()
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": SPECIAL[0], "eos_token": SPECIAL[1], "pad_token": SPECIAL[2],
        "model_max_length": 8192,
        "chat_template": CHAT_TEMPLATE,
    }, indent=1))
    # Shape of a tiny Llama: the mocker reads context length and vocabulary, never weights.
    (out / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab,
        "max_position_embeddings": 8192, "hidden_size": 64, "intermediate_size": 128,
        "num_attention_heads": 4, "num_key_value_heads": 4, "num_hidden_layers": 2,
        "bos_token_id": tok.token_to_id(SPECIAL[0]), "eos_token_id": tok.token_to_id(SPECIAL[1]),
        "torch_dtype": "bfloat16",
    }, indent=1))


if __name__ == "__main__":
    build(Path(sys.argv[1]))
