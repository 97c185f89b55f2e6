"""BERT in one file: embeddings, self-attention (SDPA), post-LN layers, pooler, and the MLM, classification and
token-classification (tagging, with an optional CRF's parameters) heads; Unpadded (a padded batch's real tokens:
batches with much padding run their dense layers on those only, UNPAD_SHARE). A head that reads some positions only
([CLS], masked tokens, words' first pieces) has the last layer computed there only (BertModel.encode's `read`).

Shapes: B batch, T tokens, H hidden size, nh heads, hs head size (H = nh * hs), V vocab, M masked positions.
Parameter names are ours (snake_case); hf_weights.py maps Hugging Face's names onto them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sbert_cli.model.config import BertConfig

ACTIVATIONS = {
    "gelu": F.gelu,  # exact, erf-based: what Google's BERT checkpoints were trained with
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}
# The same activations as oneDNN post-ops (attr, algorithm): applied inside its matmul, not in a pass of their own.
ONEDNN_ACTIVATIONS = {"gelu": ("gelu", "none"), "gelu_new": ("gelu", "tanh"), "gelu_pytorch_tanh": ("gelu", "tanh"),
                      "relu": ("relu", "")}


def _onednn_linear() -> bool:
    try:  # a torch without oneDNN (or without this op) keeps F.linear everywhere
        return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    except (AttributeError, RuntimeError):
        return False


ONEDNN_LINEAR = _onednn_linear()


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
           activation: str | None = None) -> torch.Tensor:
    """F.linear(x, weight, bias), then ACTIVATIONS[activation] if given. Without autograd (inference, and the
    evaluations during training) on float32 CPU tensors outside autocast it is oneDNN's matmul with the activation
    fused, not the MKL sgemm that F.linear calls: 10-20% more GFLOP/s on an AMD EPYC (bench_inference_ort.py),
    the same values to float32 rounding. Training keeps F.linear and its gradients."""
    global ONEDNN_LINEAR
    if (ONEDNN_LINEAR and x.dtype == torch.float32 and weight.dtype == torch.float32 and x.device.type == "cpu"
            and not torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu")
            and torch.backends.mkldnn.enabled):
        attr, algorithm = ONEDNN_ACTIVATIONS[activation] if activation else ("none", "")
        try:
            return torch.ops.mkldnn._linear_pointwise(x, weight, bias, attr, [], algorithm)
        except RuntimeError:  # a build whose oneDNN cannot run it: F.linear from now on
            ONEDNN_LINEAR = False
    y = F.linear(x, weight, bias)
    return ACTIVATIONS[activation](y) if activation else y


def dense(layer: nn.Module, x: torch.Tensor, activation: str | None = None) -> torch.Tensor:
    """layer(x), then ACTIVATIONS[activation] if given, for the model's nn.Linear layers through `linear`; other
    modules (int8-quantized ones) run as they are. Module hooks do not fire for an nn.Linear called this way."""
    if type(layer) is nn.Linear:
        return linear(x, layer.weight, layer.bias, activation)
    y = layer(x)
    return ACTIVATIONS[activation](y) if activation else y


class Embeddings(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        H = config.hidden_size
        # init_weights initialises the tables; passing _weight skips nn.Embedding's own N(0, 1) fill, which is
        # wasted work, and on the meta device (model_dir.expected_shapes) costs seconds: normal_ imports torch._dynamo.
        self.word_embeddings = nn.Embedding(
            config.vocab_size, H, padding_idx=config.pad_token_id, _weight=torch.empty(config.vocab_size, H)
        )
        self.position_embeddings = nn.Embedding(
            config.max_position_embeddings, H, _weight=torch.empty(config.max_position_embeddings, H)
        )
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, H, _weight=torch.empty(config.type_vocab_size, H))
        self.layer_norm = nn.LayerNorm(H, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
        T = input_ids.shape[1]
        x = self.word_embeddings(input_ids) + self.position_embeddings.weight[:T]  # (B, T, H) + (T, H)
        if token_type_ids is None:
            x = x + self.token_type_embeddings.weight[0]
        else:
            x = x + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.layer_norm(x))


class SelfAttention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        H = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.query = nn.Linear(H, H)
        self.key = nn.Linear(H, H)
        self.value = nn.Linear(H, H)
        self.output = nn.Linear(H, H)
        self.dropout_p = config.attention_probs_dropout_prob

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None, tokens: "Unpadded | None" = None,
                queries: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, T, H), or the batch's real tokens (N, H) when `tokens` says where they sit in (B, T): the
        projections then run on real tokens only, and attention on them put back in place. Given `queries`
        (B, M, H), the rows of x at M positions, only those attend (to all of x): (B, M, H)."""
        H = x.shape[-1]
        B = tokens.batch if tokens is not None else x.shape[0]
        nh = self.num_heads

        def heads(t: torch.Tensor) -> torch.Tensor:  # (B, L, H), or (N, H) real tokens -> (B, nh, L, hs)
            if t.dim() == 2:
                t = tokens.pad(t)
            return t.view(B, -1, nh, H // nh).transpose(1, 2)

        q = heads(dense(self.query, x if queries is None else queries))
        k, v = heads(dense(self.key, x)), heads(dense(self.value, x))
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout_p if self.training else 0.0
        ).transpose(1, 2).reshape(B, q.shape[2], H)  # (B, T or M, H)
        return dense(self.output, tokens.unpad(y) if tokens is not None and queries is None else y)


class Layer(nn.Module):
    """Post-LN transformer layer, as in the original BERT: x = LN(x + attn(x)); x = LN(x + ffn(x))."""

    def __init__(self, config: BertConfig):
        super().__init__()
        H = config.hidden_size
        self.attention = SelfAttention(config)
        self.attention_norm = nn.LayerNorm(H, eps=config.layer_norm_eps)
        self.intermediate = nn.Linear(H, config.intermediate_size)
        self.output = nn.Linear(config.intermediate_size, H)
        self.output_norm = nn.LayerNorm(H, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.activation = config.hidden_act  # a key of ACTIVATIONS

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None, tokens: "Unpadded | None" = None,
                read: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, H) or (N, H) as x; given `read` (B, M) token positions, the outputs there only: (B, M, H)."""
        if read is None:
            x = self.attention_norm(x + self.dropout(self.attention(x, attn_mask, tokens)))
        else:
            full = tokens.pad(x).view(tokens.batch, tokens.length, -1) if tokens is not None else x  # (B, T, H)
            queries = torch.gather(full, 1, read[..., None].expand(-1, -1, full.shape[-1]))  # (B, M, H)
            x = self.attention_norm(queries + self.dropout(self.attention(x, attn_mask, tokens, queries)))
        return self.output_norm(x + self.dropout(dense(self.output, dense(self.intermediate, x, self.activation))))


class Unpadded:
    """Where a padded batch's real tokens sit: `index` into the flattened (B * T) positions. unpad takes the real
    tokens' rows out of (B, T, H) as (N, H); pad puts (N, H) back as (B * T, H) with zero rows at the padding."""

    def __init__(self, attention_mask: torch.Tensor):
        self.batch, self.length = attention_mask.shape
        self.index = attention_mask.reshape(-1).nonzero().squeeze(1)  # (N,)

    def unpad(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1, x.shape[-1]).index_select(0, self.index)

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(self.batch * self.length, x.shape[-1]).index_copy(0, self.index, x)


# In training, a batch whose padding is at least this share of its positions runs its layers' dense parts on the real
# tokens only (attention still sees the padded layout): the same values at the real tokens, zeros at the padding,
# where transformers (and this model in eval mode, so every output matches it) computes values nothing reads.
UNPAD_SHARE = 0.1


class BertModel(nn.Module):
    """The encoder. forward returns (sequence_output (B, T, H), pooled_output (B, H))."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(Layer(config) for _ in range(config.num_hidden_layers))
        self.pooler = nn.Linear(config.hidden_size, config.hidden_size)
        self.apply(lambda m: init_weights(m, config.initializer_range))

    def encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        read: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Last hidden state (B, T, H), without the pooler; given `read` (B, M) token positions, only there (B, M, H).

        With `read`, the last layer computes its queries, attention output and feed-forward at those positions alone
        (keys and values still come from every token): a head that reads [CLS], or the masked positions, does not pay
        for the (T - M) / T of the last layer nothing reads. The values equal the full layer's there.
        """
        x = self.embeddings(input_ids, token_type_ids)
        positions = x.shape[0] * x.shape[1]
        real = positions if attention_mask is None else int(attention_mask.count_nonzero())  # the one host read of it
        # True = attend; (B, 1, 1, T) broadcasts over heads and queries. None: no padding.
        attn_mask = attention_mask.bool()[:, None, None, :] if real < positions else None
        tokens = Unpadded(attention_mask) if self.training and real <= (1 - UNPAD_SHARE) * positions else None
        h = tokens.unpad(x) if tokens is not None else x  # (N, H) or (B, T, H)
        last = len(self.layers) - 1  # config: at least one layer
        for i, layer in enumerate(self.layers):
            h = layer(h, attn_mask, tokens, read if i == last else None)
        if read is not None:
            return h  # (B, M, H)
        return tokens.pad(h).view_as(x) if tokens is not None else h  # zeros at the padding

    def pool(self, sequence_output: torch.Tensor) -> torch.Tensor:
        return torch.tanh(dense(self.pooler, sequence_output[:, 0]))  # the [CLS] vector, (B, H)

    def encode_cls(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        """The last hidden state at [CLS] only, (B, 1, H): the last layer runs at that position alone."""
        read = torch.zeros(input_ids.shape[0], 1, dtype=torch.long, device=input_ids.device)
        return self.encode(input_ids, attention_mask, token_type_ids, read)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.encode(input_ids, attention_mask, token_type_ids)
        return x, self.pool(x)


class MLMHead(nn.Module):
    """dense -> act -> LayerNorm -> decoder. The decoder is the word embedding matrix (weight tying), plus a bias."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.activation = config.hidden_act  # a key of ACTIVATIONS

    def forward(self, x: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
        return linear(self.layer_norm(dense(self.dense, x, self.activation)), word_embeddings, self.bias)


class BertForMaskedLM(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.bert = BertModel(config)
        self.mlm_head = MLMHead(config)
        self.mlm_head.apply(lambda m: init_weights(m, config.initializer_range))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        masked_positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (B, T, V); given masked_positions (B, M) of token indices, only there: (B, M, V).

        Pretraining passes masked_positions so no (B, T, V) tensor is ever built: with T=128 and
        15% masking that is about 7x less work and memory in the head.
        """
        x = self.bert.encode(input_ids, attention_mask, token_type_ids, masked_positions)  # (B, T or M, H)
        return self.mlm_head(x, self.bert.embeddings.word_embeddings.weight)


class _LabelHead(nn.Module):
    """The encoder, dropout and a Linear to config.num_labels: what the sequence and token classifiers share."""

    def __init__(self, config: BertConfig):
        super().__init__()
        if not config.num_labels:
            raise ValueError(f"{type(self).__name__} needs config.id2label")
        self.config = config
        self.bert = BertModel(config)
        p = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(p)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        init_weights(self.classifier, config.initializer_range)


class BertForSequenceClassification(_LabelHead):

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        """Logits (B, num_labels), from the text vector that config.classifier_pooling names."""
        pooling = self.config.classifier_pooling
        if pooling == "pooler":  # transformers' BertForSequenceClassification
            pooled = self.bert.pool(self.bert.encode_cls(input_ids, attention_mask, token_type_ids))
        elif pooling == "cls":
            pooled = self.bert.encode_cls(input_ids, attention_mask, token_type_ids)[:, 0]
        else:
            x = self.bert.encode(input_ids, attention_mask, token_type_ids)  # (B, T, H)
            if attention_mask is None:
                pooled = x.mean(dim=1)
            else:  # the mean over real tokens, as sentence-embedding models (m3e, SBERT) were trained
                weights = attention_mask.to(x.dtype)[..., None]  # (B, T, 1)
                pooled = (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        return dense(self.classifier, self.dropout(pooled))


class TagTransitions(nn.Module):
    """A CRF's parameters (crf.transitions [from, to], crf.start_scores, crf.end_scores), zero at first so the CRF
    adds nothing until trained; tasks/crf.py scores and decodes with them."""

    def __init__(self, num_tags: int):
        super().__init__()
        self.transitions = nn.Parameter(torch.zeros(num_tags, num_tags))
        self.start_scores = nn.Parameter(torch.zeros(num_tags))
        self.end_scores = nn.Parameter(torch.zeros(num_tags))


class BertForTokenClassification(_LabelHead):
    """Tag scores per token, as transformers' BertForTokenClassification (config.labels are the tag names), with an
    optional CRF on top (`crf`, None without)."""

    def __init__(self, config: BertConfig, crf: bool = False):
        super().__init__(config)
        self.crf = TagTransitions(config.num_labels) if crf else None
        self.bert.pooler.requires_grad_(False)  # never used: no optimizer or DDP waits for its gradient

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, word_positions=None) -> torch.Tensor:
        """Tag scores (B, T, num_labels); given word_positions (B, W) (each word's first sub-token), only there:
        (B, W, num_labels)."""
        x = self.bert.encode(input_ids, attention_mask, token_type_ids, word_positions)  # (B, T or W, H)
        return dense(self.classifier, self.dropout(x))


def init_weights(module: nn.Module, std: float) -> None:
    """BERT's initialisation: normal(0, initializer_range) weights, zero biases, unit LayerNorm."""
    if any(p.is_meta for p in module.parameters(recurse=False)):
        return  # a shapes-only model has no values to set
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=std)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


TASKS = {"base": BertModel, "mlm": BertForMaskedLM, "cls": BertForSequenceClassification, "ner": BertForTokenClassification}


def build_model(config: BertConfig, task: str, **options) -> nn.Module:
    """The network of `task`; options go to its constructor (crf=True for "ner")."""
    return TASKS[task](config, **options)
