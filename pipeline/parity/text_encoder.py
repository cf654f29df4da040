"""Reference fixtures for the umT5 text encoder and WanPipeline's prompt path.

Writes, under ROOT/text_encoder/:
  tokenizer/                 a tiny SentencePiece-unigram T5 tokenizer (pad 0, eos 1, unk 2, NFKC
                             precompiled charsmap, 4 sentinel tokens), saved with save_pretrained
  text_encoder/              a tiny random-weight UMT5EncoderModel (save_pretrained layout, f32)
  cases.json                 the prompts; prompt_clean() of each (ftfy on, see below); the
                             reference token ids of raw (uncleaned) strings without padding; the
                             clean-text cases; the HTML5 entity table of Python's `html` module
  embeds.safetensors         for L in (16, 512): ids_L / mask_L (the tokenizer call of
                             `_get_t5_prompt_embeds`), hidden_L (text_encoder(ids, mask)
                             .last_hidden_state, padded rows included), embeds_L and
                             negative_embeds_L (WanPipeline.encode_prompt, CFG on, no negative
                             prompt given); embeds_16_bf16 / embeds_16_f16: the same with the
                             encoder loaded in bf16 / fp16 (fp16 keeps `wo` in f32 as
                             transformers does)
  byte_fallback/tokenizer/   the tokenizer with byte pieces and `byte_fallback: true` in its
                             tokenizer.json, which transformers 5 ignores (cases.json
                             raw_tokenize_byte_fallback holds its reference ids)
  overflow/text_encoder/ + overflow/embeds.safetensors
                             a copy whose first attention output projection is scaled so that
                             fp16 overflows to inf: hidden_16_f16 exercises the inf clamp

ftfy: diffusers runs `ftfy.fix_text` in basic_clean when ftfy is importable, as Wan's requirements
have it; the reference runs so (ftfy 6.3.1 must be installed), and so does our prompt_clean
(t2v-ftfy). Prompts and clean cases include text ftfy changes: curly quotes, ligatures, full-width
letters, mojibake, C1 controls and terminal escapes.

`make_tiny_text_encoder(dir_root, seed)` is reusable: it writes dir_root/tokenizer/ and
dir_root/text_encoder/ and returns (tokenizer, model), so a whole tiny WanPipeline directory can
be assembled from it.

Usage: python pipeline/parity/text_encoder.py --out ROOT
"""

import argparse
import html.entities
import io
import json
import os
import shutil

import diffusers.pipelines.wan.pipeline_wan as pipeline_wan
import sentencepiece as spm
import torch
from diffusers import WanPipeline
from safetensors.torch import save_file
from tokenizers import Tokenizer, processors
from transformers import AutoTokenizer, T5Tokenizer, UMT5Config, UMT5EncoderModel
from transformers.convert_slow_tokenizer import T5Converter

D_MODEL = 32
EXTRA_IDS = 4
MODEL_VOCAB = 320  # ≥ tokenizer size, padded like umT5's 256384

# Training text for the tokenizer: mixed scripts so the vocabulary has multi-byte pieces.
CORPUS = [
    "A cat and a dog baking a cake together in a kitchen.",
    "The cat is carefully measuring flour, while the dog is stirring the batter.",
    "Sunlight streams through the window onto the wooden table.",
    "Bright tones, overexposed, static, blurred details, subtitles, style, works, paintings.",
    "worst quality, low quality, JPEG compression residue, ugly, incomplete, extra fingers",
    "A drone shot over snowy mountains at sunrise, cinematic lighting, 4k.",
    "Ein Hund läuft über die Straße und bellt laut.",
    "Un chat et un chien préparent un gâteau à la cuisine.",
    "Двое друзей идут по парку осенью.",
    "一只猫和一只狗在厨房里一起烤蛋糕。",
    "夕日が海に沈む、映画のような映像。",
    "The quick brown fox jumps over the lazy dog 1234567890.",
]

# Prompts for the embedding fixtures. The last one is longer than 16 tokens (truncation).
PROMPTS = [
    "A cat and a dog baking a cake together in a kitchen.",
    "  Tom &amp;amp; Jerry &lt;3\tin   the\n\nrain &#x1F600; &copy  ",
    "Ein Hund läuft über die Straße — ｆｕｌｌｗｉｄｔｈ ﬁsh, “quoted”",
    "it’s “quiet” — ﬁne ＡＢＣ café, CafÃ© â€œau laitâ€\x9d",
    " . ",
    "A drone shot over snowy mountains at sunrise, cinematic lighting, the quick brown fox "
    "jumps over the lazy dog again and again until the sun sets behind the hills.",
]

# Raw strings tokenized WITHOUT prompt_clean: they reach the parts of the tokenizer pipeline
# that cleaning hides (runs of spaces, leading/trailing space, special tokens in the text).
RAW_TOKENIZE = [
    "",
    "a",
    "  two  spaces  ",
    "tab\there\nnew line",
    "</s> in the middle <pad> and <extra_id_1>x",
    "ｆｕｌｌｗｉｄｔｈ ﬁ ① ㎏",
    "unknown ☃ ✈ 🦀 glyphs",
    "ideographic\u3000space\u00a0nbsp\u2003em",
]

# Strings for prompt_clean alone: HTML5 entity corner cases and every whitespace class.
CLEAN_CASES = [
    "&amp;lt;b&amp;gt;",
    "&amp;amp;amp;",
    "&notit; &notin; &ampx &AMP; &lt &LT;x &Eacute &eacute;",
    "&#65;&#x42;&#X43;&#0068 &#x45z &#;&#x;&#xZ &#1114111;&#1114112;&#xD800;",
    "&#0;&#13;&#128;&#129;&#150;&#159;&#1;&#11;&#127;&#xFDD0;&#xFFFE;&#x10FFFF;",
    "&#99999999999999999999999999; &#x110000;",
    "&nosuchentity; &a; &; & &&amp; &#38;amp;",
    "&ThisIsAVeryLongNameThatExceedsThirtyTwoCharacters;",
    "&NotNestedGreaterGreater; &nGtv; &bne; &fjlig;",
    "a\x1cb\x1d c\x1e \x1f",
    "\x1c leading and trailing \x1f",
    "x" + "".join(chr(c) for c in [0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20, 0x85, 0xA0, 0x1680]) + "y",
    "x" + "".join(chr(c) for c in range(0x2000, 0x200C)) + "y",
    "x\u2028\u2029\u202f\u205f\u3000\u180e\ufeffy",
    "\u00e9 vs e\u0301 \ufb01 \uff21",
    "",
    "   ",
    "&nbsp;&#160;&#x3000;",
    "it’s “quiet” — ﬁne ＡＢＣ café",
    "CafÃ© crÃ¨me, â€œsmartâ€\x9d quotes, Ð¡Ð¾Ð±Ð°ÐºÐ° and æ—¥æœ¬èªž",
    "\x1b[1;31mred\x1b[0m \x80\x93C1\x94 \u2028line\r\nbreaks\x00\ufeff",
    "&amp;\n<b>tag</b>\n&amp; &lt;",
    "ＬＯＵＤ　ＮＯＩＳＥＳ ｶﾀｶﾅ Ĳssel ǅ",
]

SEQ_LENS = (16, 512)


def _train_sentencepiece(seed):
    """A T5-style SentencePiece unigram model: pad 0, eos 1, unk 2, no bos, NFKC charsmap."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 20),
        model_writer=model,
        vocab_size=300,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        normalization_rule_name="nmt_nfkc",
        character_coverage=1.0,
        hard_vocab_limit=False,
        num_threads=1,
        seed_sentencepiece_size=10000,
        minloglevel=2,
    )
    return model.getvalue()


class _T5Proto:
    """The minimum of a slow tokenizer that `T5Converter` reads."""

    def __init__(self, vocab_file):
        self.vocab_file = vocab_file
        self._extra_ids = 0


class _Converter(T5Converter):
    def post_processor(self):
        # T5: `$A </s>`; the wrapping T5Tokenizer installs the same template.
        return processors.TemplateProcessing(
            single=["$A", "</s>"], pair=["$A", "</s>", "$B", "</s>"], special_tokens=[("</s>", 1)]
        )


def make_tiny_tokenizer(dir_root, seed=0):
    """Builds a tiny umT5-like tokenizer and saves it to dir_root/tokenizer/.

    The tokenizer.json has the layout of a converted SentencePiece model (as google/umt5-xxl's):
    Precompiled + Replace normalizer, Metaspace pre-tokenizer, Unigram model. transformers 5
    rebuilds T5Tokenizer from its vocab and charsmap when loading; the Rust side does the same.
    """
    tmp = os.path.join(dir_root, ".spiece.model")
    os.makedirs(dir_root, exist_ok=True)
    with open(tmp, "wb") as f:
        f.write(_train_sentencepiece(seed))
    backend = _Converter(_T5Proto(tmp)).converted()
    os.remove(tmp)
    tokenizer = T5Tokenizer(tokenizer_object=backend, extra_ids=EXTRA_IDS)
    tokenizer.save_pretrained(os.path.join(dir_root, "tokenizer"))
    # Load back the way WanPipeline.from_pretrained does.
    return AutoTokenizer.from_pretrained(os.path.join(dir_root, "tokenizer"))


def make_tiny_text_encoder(dir_root, seed=0):
    """Writes dir_root/tokenizer/ and dir_root/text_encoder/ (a tiny random UMT5EncoderModel).

    All weights are random, the RMS-norm gammas included (perturbed around 1), so that loading
    each of them matters. Returns (tokenizer, model) as WanPipeline.from_pretrained would load
    them (f32, eval mode).
    """
    tokenizer = make_tiny_tokenizer(dir_root, seed)
    assert len(tokenizer) <= MODEL_VOCAB, len(tokenizer)
    config = UMT5Config(
        vocab_size=MODEL_VOCAB,
        d_model=D_MODEL,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
    )
    torch.manual_seed(seed)
    model = UMT5EncoderModel(config).eval()
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("layer_norm.weight"):
                param.copy_(1.0 + 0.2 * torch.randn(param.shape, generator=generator))
    model.save_pretrained(os.path.join(dir_root, "text_encoder"))
    model = UMT5EncoderModel.from_pretrained(os.path.join(dir_root, "text_encoder")).eval()
    return tokenizer, model


def _byte_fallback_variant(dir_root):
    """The tiny tokenizer with 256 byte pieces and `byte_fallback: true` in tokenizer.json.

    transformers 5 rebuilds T5Tokenizer with byte_fallback=False, so characters outside the
    vocabulary become <unk> where the file as saved would give byte tokens. Returns the raw
    strings' reference ids.
    """
    source = os.path.join(dir_root, "tokenizer")
    target = os.path.join(dir_root, "byte_fallback", "tokenizer")
    os.makedirs(target)
    shutil.copy(os.path.join(source, "tokenizer_config.json"), target)
    with open(os.path.join(source, "tokenizer.json"), encoding="utf-8") as f:
        file = json.load(f)
    vocab = file["model"]["vocab"]
    vocab += [[f"<extra_id_{i}>", 0.0] for i in range(EXTRA_IDS)]  # ids the added tokens hold
    vocab += [[f"<0x{b:02X}>", -30.0] for b in range(256)]
    file["model"]["byte_fallback"] = True
    with open(os.path.join(target, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(file, f, ensure_ascii=False)
    reference = AutoTokenizer.from_pretrained(target)
    as_saved = Tokenizer.from_file(os.path.join(target, "tokenizer.json"))
    ids = [[s, reference(s).input_ids] for s in RAW_TOKENIZE]
    assert any(i != as_saved.encode(s).ids for s, i in ids), "the variant must differ from the file as saved"
    return ids


def _pipeline(tokenizer, text_encoder):
    """A WanPipeline holding only the text side; its own methods run the prompt path."""
    return WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=None, scheduler=None)


def _embeddings(pipe, seq_len, suffix=""):
    out = {}
    texts = [pipeline_wan.prompt_clean(p) for p in PROMPTS]
    tok = pipe.tokenizer(
        texts,
        padding="max_length",
        max_length=seq_len,
        truncation=True,
        add_special_tokens=True,
        return_attention_mask=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        hidden = pipe.text_encoder(tok.input_ids, tok.attention_mask).last_hidden_state
        embeds, negative = pipe.encode_prompt(
            PROMPTS,
            negative_prompt=None,
            do_classifier_free_guidance=True,
            max_sequence_length=seq_len,
            device=torch.device("cpu"),
        )
    out[f"ids_{seq_len}{suffix}"] = tok.input_ids.to(torch.int64)
    out[f"mask_{seq_len}{suffix}"] = tok.attention_mask.to(torch.int64)
    out[f"hidden_{seq_len}{suffix}"] = hidden.contiguous()
    out[f"embeds_{seq_len}{suffix}"] = embeds.contiguous()
    out[f"negative_embeds_{seq_len}{suffix}"] = negative.contiguous()
    return out


def _half_embeddings(pipe, dir_root, dtype, suffix):
    model = UMT5EncoderModel.from_pretrained(os.path.join(dir_root, "text_encoder"), dtype=dtype).eval()
    wo = model.encoder.block[0].layer[1].DenseReluDense.wo.weight.dtype
    print(f"  {dtype}: wo kept in {wo}")
    half = _pipeline(pipe.tokenizer, model)
    with torch.no_grad():
        embeds = half._get_t5_prompt_embeds(PROMPTS, max_sequence_length=16, device=torch.device("cpu"))
    return {f"embeds_16{suffix}": embeds.contiguous()}


def _overflow(dir_root, model, tokenizer):
    """A copy of the encoder whose first attention (v, o) is scaled past the fp16 range."""
    root = os.path.join(dir_root, "overflow")
    overflow = UMT5EncoderModel(model.config).eval()
    overflow.load_state_dict(model.state_dict())
    with torch.no_grad():
        overflow.encoder.block[0].layer[0].SelfAttention.v.weight.mul_(100.0)
        overflow.encoder.block[0].layer[0].SelfAttention.o.weight.mul_(1000.0)
    overflow.save_pretrained(os.path.join(root, "text_encoder"))
    f16 = UMT5EncoderModel.from_pretrained(os.path.join(root, "text_encoder"), dtype=torch.float16).eval()
    texts = [pipeline_wan.prompt_clean(p) for p in PROMPTS]
    tok = tokenizer(texts, padding="max_length", max_length=16, truncation=True, return_tensors="pt")
    captured = {}

    def record_inf(_module, _inputs, outputs):
        captured["inf"] = bool(torch.isinf(outputs[0]).any())

    hook = f16.encoder.block[0].layer[0].register_forward_hook(record_inf)
    with torch.no_grad():
        hidden = f16(tok.input_ids, tok.attention_mask).last_hidden_state
    hook.remove()
    assert captured["inf"], "the overflow case must produce inf in fp16"
    assert torch.isfinite(hidden).all()
    save_file(
        {"ids_16": tok.input_ids.to(torch.int64), "mask_16": tok.attention_mask.to(torch.int64),
         "hidden_16_f16": hidden.contiguous()},
        os.path.join(root, "embeds.safetensors"),
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="fixtures root; writes ROOT/text_encoder/")
    args = parser.parse_args()
    root = os.path.join(args.out, "text_encoder")
    shutil.rmtree(root, ignore_errors=True)
    torch.set_num_threads(1)

    tokenizer, model = make_tiny_text_encoder(root, seed=0)

    # The reference prompt path with ftfy (see the module docstring).
    assert pipeline_wan.is_ftfy_available(), "install ftfy==6.3.1: the reference cleans prompts with it"
    cleaned = [pipeline_wan.prompt_clean(p) for p in PROMPTS]
    clean_cases = [[s, pipeline_wan.prompt_clean(s)] for s in CLEAN_CASES]

    pipe = _pipeline(tokenizer, model)
    tensors = {}
    for seq_len in SEQ_LENS:
        tensors.update(_embeddings(pipe, seq_len))
    tensors.update(_half_embeddings(pipe, root, torch.bfloat16, "_bf16"))
    tensors.update(_half_embeddings(pipe, root, torch.float16, "_f16"))
    save_file(tensors, os.path.join(root, "embeds.safetensors"))

    cases = {
        "prompts": PROMPTS,
        "cleaned": cleaned,
        "token_counts": [len(tokenizer(t).input_ids) for t in cleaned],
        "raw_tokenize": [[s, tokenizer(s).input_ids] for s in RAW_TOKENIZE],
        "raw_tokenize_byte_fallback": _byte_fallback_variant(root),
        "clean_cases": clean_cases,
        "html5_entities": html.entities.html5,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    with open(os.path.join(root, "cases.json"), "w", encoding="utf-8") as f:
        json.dump(cases, f, ensure_ascii=True, indent=1)

    _overflow(root, model, tokenizer)
    print(f"wrote {root}")


if __name__ == "__main__":
    main()
