"""The `tiny` model of `sdpg.py --model tiny`: a small random Qwen2ForCausalLM (2 layers, hidden size 64) with a
byte-level ChatML tokenizer, built offline in a fraction of a second. It stands in for Qwen2.5 wherever the Hub or a
GPU is missing: the laptop quickstart, the tests, the teaching labs. Nothing of SDPG is here; sdpg.py loads it by
name (load_model("tiny", seed)).
"""

import torch


def build_tiny_model(seed: int = 0):
    """A small random Qwen2ForCausalLM with a byte-level ChatML tokenizer (259 tokens), built offline. Its weights
    come from `seed` alone; the global RNG is left as it was."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    # Byte-level BPE with no merges: Qwen2's own pre-tokenizer and decoder, so the tokenizer survives a
    # save/reload through AutoTokenizer (which picks Qwen2Tokenizer from the checkpoint's model_type)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # the ids' roles match Qwen's (pad, chat, eos)
    vocab = {token: i for i, token in enumerate(specials + sorted(pre_tokenizers.ByteLevel.alphabet()))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(specials)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.chat_template = (  # Qwen2.5's template shape, default system message included
        "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "{% endif %}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    config = Qwen2Config(vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         tie_word_embeddings=True, initializer_range=0.1, bos_token_id=0, pad_token_id=0,
                         eos_token_id=[2, 0])  # initializer_range 0.1 (not 0.02): the two views differ visibly
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id, model.generation_config.pad_token_id = [2, 0], 0
    return model, tokenizer
