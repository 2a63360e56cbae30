"""The zoo: tiny, randomly initialised architectures (nothing downloaded), each built by a function
returning the model and its inputs at two batch sizes.

Hugging Face models come from their configs at toy sizes and are passed to bitpress as they are
(ModelOutput results, use_cache and all); the classics are written here in plain torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

Inputs = Callable[[int], tuple[torch.Tensor, ...]]


@dataclass(frozen=True)
class Arch:
    name: str
    build: Callable[[], nn.Module]
    inputs: Inputs  # batch -> example inputs
    family: str  # "hf" | "classic"


ZOO: dict[str, Arch] = {}
BATCHES = (2, 3)  # the example batch, and the other batch the same architecture must run


def _register(name: str, family: str, inputs: Inputs) -> Callable[[Callable[[], nn.Module]], Callable[[], nn.Module]]:
    def deco(fn: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
        ZOO[name] = Arch(name, fn, inputs, family)
        return fn

    return deco


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def ids(vocab: int = 96, seq: int = 8) -> Inputs:
    return lambda b: (torch.randint(0, vocab, (b, seq), generator=_gen(b)),)


def ids_mask(vocab: int = 96, seq: int = 8) -> Inputs:
    def make(b: int) -> tuple[torch.Tensor, ...]:
        x = torch.randint(0, vocab, (b, seq), generator=_gen(b))
        mask = torch.ones(b, seq, dtype=torch.int64)
        mask[0, -2:] = 0  # one padded row: the mask path is exercised
        return x, mask

    return make


def image(c: int = 3, hw: int = 32) -> Inputs:
    return lambda b: (torch.randn(b, c, hw, hw, generator=_gen(b)),)


def audio(n: int = 800) -> Inputs:
    return lambda b: (torch.randn(b, n, generator=_gen(b)),)


def _hf(cls_name: str, cfg_name: str, **cfg: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import transformers

        torch.manual_seed(0)
        config = getattr(transformers, cfg_name)(**cfg)
        return getattr(transformers, cls_name)(config).eval()

    return build


def hf(name: str, cls_name: str, cfg_name: str, inputs: Inputs, **cfg: Any) -> None:
    ZOO[name] = Arch(name, _hf(cls_name, cfg_name, **cfg), inputs, "hf")


TEXT = {"vocab_size": 96, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4, "intermediate_size": 64}
DEC = TEXT | {"max_position_embeddings": 64}
LLAMA_LIKE = DEC | {"num_key_value_heads": 2}

# ---------------------------------------------------------------- encoders
hf("bert", "BertModel", "BertConfig", ids_mask(), **TEXT, max_position_embeddings=32)
hf("roberta", "RobertaModel", "RobertaConfig", ids_mask(), **TEXT, max_position_embeddings=32, pad_token_id=1)
hf("albert", "AlbertModel", "AlbertConfig", ids_mask(), **TEXT, embedding_size=16, max_position_embeddings=32)
hf("deberta-v2", "DebertaV2Model", "DebertaV2Config", ids_mask(), **TEXT, max_position_embeddings=32)
hf("distilbert", "DistilBertModel", "DistilBertConfig", ids_mask(), vocab_size=96, dim=32, n_layers=1, n_heads=4, hidden_dim=64, max_position_embeddings=32)  # fmt: skip
hf("electra", "ElectraModel", "ElectraConfig", ids_mask(), **TEXT, embedding_size=16, max_position_embeddings=32)
hf("t5-encoder", "T5EncoderModel", "T5Config", ids(), vocab_size=96, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4)
# ---------------------------------------------------------------- decoders
hf("gpt2", "GPT2LMHeadModel", "GPT2Config", ids(), vocab_size=96, n_embd=32, n_layer=1, n_head=4, n_positions=64)
hf("llama", "LlamaForCausalLM", "LlamaConfig", ids(), **LLAMA_LIKE)
hf("qwen2", "Qwen2ForCausalLM", "Qwen2Config", ids(), **LLAMA_LIKE)
hf("qwen3", "Qwen3ForCausalLM", "Qwen3Config", ids(), **LLAMA_LIKE, head_dim=8)
hf("mistral", "MistralForCausalLM", "MistralConfig", ids(), **LLAMA_LIKE)
hf("phi", "PhiForCausalLM", "PhiConfig", ids(), **DEC)
hf("gemma", "GemmaForCausalLM", "GemmaConfig", ids(), **LLAMA_LIKE, head_dim=8)
hf("opt", "OPTForCausalLM", "OPTConfig", ids(), vocab_size=96, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, ffn_dim=64, max_position_embeddings=64, word_embed_proj_dim=32)  # fmt: skip
hf("gpt-neox", "GPTNeoXForCausalLM", "GPTNeoXConfig", ids(), **DEC)
hf("bloom", "BloomForCausalLM", "BloomConfig", ids(), vocab_size=96, hidden_size=32, n_layer=1, n_head=4)
hf("falcon", "FalconForCausalLM", "FalconConfig", ids(), vocab_size=96, hidden_size=32, num_hidden_layers=1, num_attention_heads=4)
# ---------------------------------------------------------------- vision
VIT = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4, "intermediate_size": 64, "image_size": 32, "patch_size": 8}
hf("vit", "ViTModel", "ViTConfig", image(), **VIT)
hf("deit", "DeiTModel", "DeiTConfig", image(), **VIT)
hf("beit", "BeitModel", "BeitConfig", image(), **VIT, use_relative_position_bias=True)
hf("dinov2", "Dinov2Model", "Dinov2Config", image(), **VIT)
hf("clip-vision", "CLIPVisionModel", "CLIPVisionConfig", image(), **VIT)
hf("swin", "SwinModel", "SwinConfig", image(), image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 4], window_size=4)  # fmt: skip
hf("convnext", "ConvNextModel", "ConvNextConfig", image(), hidden_sizes=[8, 16], depths=[1, 1], num_stages=2)
hf("convnextv2", "ConvNextV2Model", "ConvNextV2Config", image(), hidden_sizes=[8, 16], depths=[1, 1], num_stages=2)
hf("resnet", "ResNetModel", "ResNetConfig", image(), embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")  # fmt: skip
hf("mobilenet-v2", "MobileNetV2Model", "MobileNetV2Config", image(), depth_multiplier=0.25, image_size=32)
hf("efficientnet", "EfficientNetModel", "EfficientNetConfig", image(), width_coefficient=0.1, depth_coefficient=0.1, image_size=32, hidden_dim=128)  # fmt: skip
hf("regnet", "RegNetModel", "RegNetConfig", image(), embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], groups_width=8)
hf("segformer", "SegformerModel", "SegformerConfig", image(), num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16], num_attention_heads=[1, 2], patch_sizes=[7, 3], strides=[4, 2], mlp_ratios=[2, 2])  # fmt: skip
hf("mobilevit", "MobileViTModel", "MobileViTConfig", image(), image_size=32, hidden_sizes=[16, 24, 32], neck_hidden_sizes=[8, 8, 16, 16, 24, 32, 64], num_attention_heads=2)  # fmt: skip
hf("poolformer", "PoolFormerModel", "PoolFormerConfig", image(), hidden_sizes=[8, 16], depths=[1, 1], num_encoder_blocks=2, patch_sizes=[7, 3], strides=[4, 2], padding=[2, 1])  # fmt: skip
# ---------------------------------------------------------------- audio
AUDIO = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4, "intermediate_size": 64, "conv_dim": (16, 16), "conv_stride": (5, 2), "conv_kernel": (10, 3), "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 4}  # fmt: skip
hf("wav2vec2", "Wav2Vec2Model", "Wav2Vec2Config", audio(), **AUDIO)
hf("hubert", "HubertModel", "HubertConfig", audio(), **AUDIO)


def _whisper_encoder() -> nn.Module:
    import transformers

    torch.manual_seed(0)
    cfg = transformers.WhisperConfig(
        vocab_size=96, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=16, max_source_positions=16, pad_token_id=0,
        bos_token_id=1, eos_token_id=2, decoder_start_token_id=1,
    )  # fmt: skip
    return transformers.WhisperModel(cfg).get_encoder().eval()


ZOO["whisper-encoder"] = Arch("whisper-encoder", _whisper_encoder, lambda b: (torch.randn(b, 16, 32, generator=_gen(b)),), "hf")


# ============================================================================ classics


def _conv_bn(cin: int, cout: int, k: int = 3, s: int = 1, groups: int = 1, act: type[nn.Module] | None = nn.ReLU) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class _SE(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, c // 2, 1), nn.Conv2d(c // 2, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        return x * F.hardsigmoid(self.fc2(F.relu(self.fc1(s))))


class MobileNetV3(nn.Module):
    """Inverted residuals with squeeze-excite and hardswish (MobileNetV3-small style)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _conv_bn(3, 8, s=2, act=nn.Hardswish)
        self.block = nn.Sequential(_conv_bn(8, 16, 1, act=nn.Hardswish), _conv_bn(16, 16, 3, 2, groups=16, act=nn.Hardswish), _SE(16), _conv_bn(16, 8, 1, act=None))  # fmt: skip
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.block(x) + F.avg_pool2d(x, 2)
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


class ShuffleNet(nn.Module):
    """ShuffleNetV2 units: channel split, depthwise conv, concat, channel shuffle."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _conv_bn(3, 16, s=2)
        self.branch = nn.Sequential(_conv_bn(8, 8, 1), _conv_bn(8, 8, 3, groups=8, act=None), _conv_bn(8, 8, 1))
        self.shuffle = nn.ChannelShuffle(2)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(self.stem(x), 3, 2, 1)
        a, b = x.chunk(2, dim=1)
        x = self.shuffle(torch.cat([a, self.branch(b)], 1))
        return self.fc(x.mean((2, 3)))


class DenseNet(nn.Module):
    """Dense blocks (every layer sees the concatenation of all earlier ones) and a transition."""

    def __init__(self, growth: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.layers = nn.ModuleList(nn.Sequential(nn.BatchNorm2d(8 + i * growth), nn.ReLU(), nn.Conv2d(8 + i * growth, growth, 3, padding=1)) for i in range(3))  # fmt: skip
        self.trans = nn.Sequential(nn.BatchNorm2d(20), nn.ReLU(), nn.Conv2d(20, 10, 1), nn.AvgPool2d(2))
        self.fc = nn.Linear(10, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for layer in self.layers:
            x = torch.cat([x, layer(x)], 1)
        return self.fc(F.adaptive_avg_pool2d(self.trans(x), 1).flatten(1))


class UNet(nn.Module):
    """Two-level UNet: max-pool down, ConvTranspose2d and bilinear upsampling up, skip concatenations."""

    def __init__(self) -> None:
        super().__init__()
        self.enc1, self.enc2 = _conv_bn(3, 8), _conv_bn(8, 16)
        self.mid = _conv_bn(16, 16)
        self.up2 = nn.ConvTranspose2d(16, 16, 2, stride=2)
        self.dec2 = _conv_bn(32, 8)
        self.up1 = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.dec1 = _conv_bn(16, 8)
        self.out = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        m = self.mid(F.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([self.up2(m), e2], 1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
        return self.out(d1)


class LSTMTagger(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.lstm = nn.LSTM(16, 16, batch_first=True, bidirectional=True)
        self.out = nn.Linear(32, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(self.emb(x))
        return self.out(h).log_softmax(-1)


class GRUClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(8, 16, num_layers=2, batch_first=True)
        self.out = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, last = self.gru(x)
        return self.out(h[:, -1] + last[-1])


class AudioConv1d(nn.Module):
    """Raw-audio 1-D conv net: strided conv front end, GroupNorm, max/avg pools, reflect padding."""

    def __init__(self) -> None:
        super().__init__()
        self.front = nn.Conv1d(1, 8, 9, stride=4)
        self.norm = nn.GroupNorm(2, 8)
        self.body = nn.Sequential(nn.Conv1d(8, 16, 3, padding=1), nn.PReLU(16), nn.MaxPool1d(2), nn.Conv1d(16, 16, 3, dilation=2))
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x.unsqueeze(1), (4, 4), mode="reflect")
        x = self.body(F.gelu(self.norm(self.front(x))))
        return self.fc(F.adaptive_avg_pool1d(x, 1).flatten(1))


class TwoInputDict(nn.Module):
    """Image + tabular features in, a dict of two heads out."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = _conv_bn(3, 8, s=2)
        self.tab = nn.Sequential(nn.Linear(6, 16), nn.LayerNorm(16), nn.SiLU())
        self.cls = nn.Linear(24, 3)
        self.reg = nn.Linear(24, 1)

    def forward(self, img: torch.Tensor, feats: torch.Tensor) -> dict[str, torch.Tensor]:
        z = torch.cat([self.conv(img).mean((2, 3)), self.tab(feats)], -1)
        return {"logits": self.cls(z), "score": torch.sigmoid(self.reg(z)).squeeze(-1)}


class ViTMHA(nn.Module):
    """Hand-written ViT: patch conv, class token, nn.MultiheadAttention blocks."""

    def __init__(self, d: int = 32, patch: int = 8, img: int = 32) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, d, patch, patch)
        self.cls = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, (img // patch) ** 2 + 1, d) * 0.02)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, 4, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.head = nn.Linear(d, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        x = x + self.mlp(self.norm2(x))
        return self.head(x[:, 0])


class ViTSDPA(nn.Module):
    """Hand-written ViT with F.scaled_dot_product_attention on a fused qkv projection."""

    def __init__(self, d: int = 32, heads: int = 4, patch: int = 8) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, d, patch, patch)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, 10)
        self.h = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm(x)).view(b, t, 3, self.h, d // self.h).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, d)
        return self.head((x + self.proj(a)).mean(1))


class TCNEinsum(nn.Module):
    """Depthwise-separable temporal conv net with an einsum channel mix, causal (left) padding and cumsum pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.dw = nn.Conv1d(8, 8, 3, groups=8)
        self.mix = nn.Parameter(torch.randn(8, 12) * 0.3)
        self.norm = nn.InstanceNorm1d(12, affine=True)
        self.out = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dw(F.pad(x, (2, 0)))
        h = F.mish(self.norm(torch.einsum("bct,cd->bdt", h, self.mix)))
        pooled = torch.cumsum(h, -1)[..., -1] / h.shape[-1]
        return self.out(pooled)


_register("mobilenet-v3", "classic", image())(MobileNetV3)
_register("shufflenet", "classic", image())(ShuffleNet)
_register("densenet", "classic", image(hw=16))(DenseNet)
_register("unet", "classic", image(hw=16))(UNet)
_register("lstm-tagger", "classic", ids(vocab=50, seq=6))(LSTMTagger)
_register("gru", "classic", lambda b: (torch.randn(b, 6, 8, generator=_gen(b)),))(GRUClassifier)
_register("audio-conv1d", "classic", audio(n=256))(AudioConv1d)
_register("two-input-dict", "classic", lambda b: (torch.randn(b, 3, 16, 16, generator=_gen(b)), torch.randn(b, 6, generator=_gen(b + 7))))(TwoInputDict)  # fmt: skip
_register("vit-mha", "classic", image())(ViTMHA)
_register("vit-sdpa", "classic", image())(ViTSDPA)
_register("tcn-einsum", "classic", lambda b: (torch.randn(b, 8, 20, generator=_gen(b)),))(TCNEinsum)
