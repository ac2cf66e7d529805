"""The notebook's own sampler: the model's forward, one token per step for many responses at once.

What makes it fast on a small model, where a decoding step costs mostly its fixed overhead:
- Continuous batching. A fixed number of slots decode together; when a response ends (EOS or the
  length cap), the next waiting prompt is prefilled into its slot, so the batch stays full instead
  of waiting for its longest response. An episode's next turn stays in its slot: only the tokens the
  environment added are computed, over the cached context.
- A preallocated KV cache (`SlotCache`). Every slot's keys and values sit in buffers sized once; a
  step writes one column in place and attends over a view, where a growing cache would copy itself
  at every step. All slots share the column index: a prompt that joins is written so that it ends
  at the current column (left padding), and columns no live slot still reads are dropped.
- Attention over only what each group of slots needs (on a CPU, where reading the cache is most of
  a step). The slots are sorted by age every few steps and attention runs per group, from the first
  column the group's oldest response reads, so that short responses do not pay for the long ones'
  prefixes.
- A fused decoding step for Qwen2-family models (`FusedDecodingStep`): the same computation as the
  model's forward in a fraction of its tensor operations.
- No autograd records: sampling runs in inference mode (`without_autograd`), which takes a good part of
  each small operation's cost away and changes no number.
Sampling draws each token by inverse CDF (one uniform per row against the cumulative softmax), which
is exact temperature sampling with a single random number per row.
"""
import contextlib
import functools
from dataclasses import dataclass

import torch
from torch.distributed.tensor import DTensor
from tqdm.auto import tqdm
from transformers import AttentionInterface, DynamicCache
from transformers.cache_utils import Cache, CacheLayerMixin


class SlotLayer(CacheLayerMixin):
    """One decoder layer's keys and values, [slots, kv heads, capacity, head dim], written in place. The keys are
    stored transposed ([slots, kv heads, head dim, capacity], `key_buffer` is a view of that in the values' order),
    so that a query's product with a window of keys reads each head dimension's columns in one run."""

    is_sliding = False

    def __init__(self, cache: "SlotCache", shape: tuple, dtype: torch.dtype, device):
        super().__init__()
        self.cache = cache
        # Columns from the cache's `length` on are written before anything reads them, so they start empty (and
        # untouched memory costs nothing); the columns before it are zeros, not empty: masked columns are still
        # multiplied by their (zero) attention weight, which must not meet a NaN.
        self.key_buffer = torch.empty(shape[:2] + shape[:1:-1], dtype=dtype, device=device).transpose(-1, -2)
        self.value_buffer = torch.empty(shape, dtype=dtype, device=device)
        self.key_buffer[:, :, :cache.length] = 0
        self.value_buffer[:, :, :cache.length] = 0
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        pass  # the buffers are sized up front

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        start, end = self.cache.length, self.cache.length + key_states.shape[-2]
        self.key_buffer[:, :, start:end] = key_states
        self.value_buffer[:, :, start:end] = value_states
        self.keys, self.values = self.key_buffer[:, :, :end], self.value_buffer[:, :, :end]
        return self.keys, self.values

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.cache.length + query_length, 0

    def get_seq_length(self) -> int:
        return self.cache.length

    def get_max_length(self) -> int:
        return self.cache.capacity


class SlotCache(Cache):
    """A KV cache of fixed slots and columns. `length` columns are in use, shared by all slots (zeros at first); the
    model's forward writes the next ones, and the caller moves `length` on after each forward."""

    def __init__(self, model_config, slots: int, capacity: int, dtype: torch.dtype, device, length: int = 0):
        self.capacity, self.length = capacity, length
        heads = model_config.num_attention_heads
        head_dim = getattr(model_config, "head_dim", None) or model_config.hidden_size // heads
        shape = (slots, getattr(model_config, "num_key_value_heads", None) or heads, capacity, head_dim)
        super().__init__(layers=[SlotLayer(self, shape, dtype, device)
                                 for _ in range(model_config.num_hidden_layers)])

    def place(self, slots: torch.Tensor, prefilled: DynamicCache, rows: torch.Tensor) -> None:
        """Write rows `rows` of a prefilled cache into `slots`, ending at column `length`."""
        for layer, source in zip(self.layers, prefilled.layers):
            width = source.keys.shape[-2]
            layer.key_buffer[slots, :, self.length - width:self.length] = source.keys[rows]
            layer.value_buffer[slots, :, self.length - width:self.length] = source.values[rows]

    def keep(self, slots: torch.Tensor, first_column: int) -> None:
        """Keep only `slots` (ascending), moved to the front of the buffers in place. Only columns from
        `first_column` to `length` are still read, so only those move; what the other columns of the kept slots
        hold is finite (an earlier slot's keys and values, or zeros) and is either masked or written before it
        is read."""
        count = len(slots)
        for layer in self.layers:
            for name in ("key_buffer", "value_buffer"):
                buffer = getattr(layer, name)
                buffer[:count, :, first_column:self.length] = buffer[slots, :, first_column:self.length]
                setattr(layer, name, buffer[:count])  # a view: no new memory

    def reorder(self, order: torch.Tensor, first_column: int) -> None:
        """Put slot order[i] in slot i (only columns from `first_column` on are still read)."""
        for layer in self.layers:
            for buffer in (layer.key_buffer, layer.value_buffer):
                buffer[:, :, first_column:self.length] = buffer[order, :, first_column:self.length]

    def drop_columns(self, count: int) -> None:
        """Drop the first `count` columns (no slot reads them any more); the rest move to the front."""
        for layer in self.layers:
            for buffer in (layer.key_buffer, layer.value_buffer):
                buffer[:, :, :self.length - count] = buffer[:, :, count:self.length].clone()
        self.length -= count


WINDOWED_ATTENTION = "tinyzero_slot_windows"


def windowed_attention(module, query, key, value, attention_mask, scaling: float, slot_windows=(), **kwargs):
    """One decoding step's attention over groups of slots, each reading only the columns from its own first one:
    `slot_windows` holds (first slot, end slot, first column) per group. Grouped-query heads share their keys
    and values without copies. Returns [slots, 1, heads, head dim], as transformers' attention functions do."""
    slots, heads, _, head_dim = query.shape
    return windowed_attention_of_step(query.reshape(slots, heads, head_dim).contiguous(), key, value,
                                      with_group_masks(slot_windows, attention_mask),
                                      scaling).reshape(slots, 1, heads, head_dim), None


def with_group_masks(slot_windows: list, bias: torch.Tensor) -> list:
    """Each group (first slot, end slot, first column) of `slot_windows` with its additive mask [slots, 1, 1, columns]
    sliced from `bias` [slots, columns]."""
    return [(a, b, column, bias[a:b, None, None, column:]) for a, b, column in slot_windows]


def windowed_attention_of_step(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, windows: list,
                               scaling: float) -> torch.Tensor:
    """`windowed_attention` for queries [slots, heads, head dim] (contiguous) and `windows` of (first slot, end slot,
    first column, the group's additive mask [slots, 1, 1, columns]); returns [slots, heads, head dim]. Each group's
    products are batched matrix products over (slot, kv head) pairs: what `torch.matmul` reduces the 4-d product
    to, without its reshaping around them."""
    slots, heads, head_dim = query.shape
    kv_heads = key.shape[1]
    group_size = heads // kv_heads
    outputs = []
    for a, b, column, group_mask in windows:
        pairs = (b - a) * kv_heads
        scores = torch.bmm(query[a:b].view(pairs, group_size, head_dim),
                           key[a:b, :, column:].transpose(-1, -2).reshape(pairs, head_dim, -1)).mul_(scaling)
        scores.view(b - a, kv_heads, group_size, -1).add_(group_mask)  # 0 where a slot attends, else -inf
        outputs.append(torch.bmm(scores.softmax(-1), value[a:b, :, column:].reshape(pairs, -1, head_dim)))
    return torch.cat(outputs).view(slots, heads, head_dim)


class FusedDecodingStep:
    """A decoding step of a Qwen2-family model (Qwen2, Qwen2.5) over a `SlotCache`, in a few dozen tensor operations
    where the model's own forward takes several hundred: the query, key and value projections are one matrix
    product, as are the MLP's gate and up projections; rotary embeddings come from a table that the model's own
    rotary module fills once, and a row's rotation is a gather and a fused multiply-add; attention is
    `windowed_attention`'s. On a small model a step's cost is mostly its count of operations, so this is where the
    sampler's time goes down. Models of other architectures, and sharded parameters, decode with the model's forward.

    The fused weights are copies taken when the step is made: make a new step after the weights change."""

    def __init__(self, model, positions: int):
        inner, config = model.model, model.config
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.eps = config.rms_norm_eps
        self.embed = inner.embed_tokens.weight
        self.final_norm = inner.norm.weight
        self.lm_head = model.lm_head.weight
        self.layers = []
        for layer in inner.layers:
            attention, mlp = layer.self_attn, layer.mlp
            projections = (attention.q_proj, attention.k_proj, attention.v_proj)
            self.layers.append(dict(
                input_norm=layer.input_layernorm.weight, post_norm=layer.post_attention_layernorm.weight,
                qkv=torch.cat([p.weight for p in projections]),
                qkv_bias=None if attention.q_proj.bias is None else torch.cat([p.bias for p in projections]),
                out=attention.o_proj.weight, out_bias=attention.o_proj.bias,
                gate_up=torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]), down=mlp.down_proj.weight))
        self.scaling = inner.layers[0].self_attn.scaling
        table = torch.arange(positions, device=self.embed.device)[None]
        cos, sin = inner.rotary_emb(self.embed[:1], table)
        half = self.head_dim // 2
        # rotate_half(x) = cat(-x[half:], x[:half]) = x[..., swap] * sign
        self.swap = torch.cat([torch.arange(half, self.head_dim), torch.arange(half)]).to(self.embed.device)
        sign = torch.cat([-torch.ones(half), torch.ones(half)]).to(sin)
        self.cos, self.signed_sin = cos[0], sin[0] * sign

    @staticmethod
    def supports(model) -> bool:
        """Whether this step computes what `model`'s own forward does: a Qwen2-family model with full attention
        everywhere, SiLU MLPs, and plain (not sharded) parameters."""
        config = model.config
        return (config.model_type == "qwen2" and config.hidden_act == "silu"
                and all(kind == "full_attention" for kind in getattr(config, "layer_types", None) or ["full_attention"])
                and not has_sharded_parameters(model))

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, bias: torch.Tensor, windows: list,
                 cache: SlotCache) -> torch.Tensor:
        """Logits of the next token for each slot, given each slot's last token and its position; writes the
        token's keys and values at column `cache.length`."""
        slots, heads, kv_heads, head_dim = len(tokens), self.heads, self.kv_heads, self.head_dim
        column = cache.length
        positions = positions.clamp(max=len(self.cos) - 1)  # a free slot's position runs on; its output is unused
        cos, signed_sin = self.cos[positions][:, None], self.signed_sin[positions][:, None]
        windows = with_group_masks(windows, bias)  # each group's mask is the same in every layer
        hidden = torch.nn.functional.embedding(tokens, self.embed)
        for weights, layer in zip(self.layers, cache.layers):
            normed = torch.nn.functional.rms_norm(hidden, (hidden.shape[-1],), weights["input_norm"], self.eps)
            qkv = torch.nn.functional.linear(normed, weights["qkv"], weights["qkv_bias"])
            rotated = qkv[:, :(heads + kv_heads) * head_dim].view(slots, heads + kv_heads, head_dim)
            rotated = torch.addcmul(rotated * cos, rotated[..., self.swap], signed_sin)
            layer.key_buffer[:, :, column] = rotated[:, heads:]
            layer.value_buffer[:, :, column] = qkv[:, (heads + kv_heads) * head_dim:].view(slots, kv_heads, head_dim)
            attended = windowed_attention_of_step(rotated[:, :heads].contiguous(), layer.key_buffer[:, :, :column + 1],
                                                  layer.value_buffer[:, :, :column + 1], windows, self.scaling)
            hidden = hidden + torch.nn.functional.linear(attended.view(slots, -1), weights["out"],
                                                         weights["out_bias"])
            normed = torch.nn.functional.rms_norm(hidden, (hidden.shape[-1],), weights["post_norm"], self.eps)
            gate, up = torch.nn.functional.linear(normed, weights["gate_up"]).chunk(2, dim=-1)
            hidden = hidden + torch.nn.functional.linear(torch.nn.functional.silu(gate).mul_(up), weights["down"])
        hidden = torch.nn.functional.rms_norm(hidden, (hidden.shape[-1],), self.final_norm, self.eps)
        return torch.nn.functional.linear(hidden, self.lm_head)


@contextlib.contextmanager
def attention_implementation(model, name: str):
    """Run the model's attention layers with the registered attention function `name` for a while."""
    saved = model.config._attn_implementation
    model.config._attn_implementation = name
    try:
        yield
    finally:
        model.config._attn_implementation = saved


DROP_COLUMNS_AT = 32  # unread columns at the front of the KV cache that are worth a copy to drop, or
DROP_SHARE = 1 / 8  # this share of the cache's columns if more (an episode's cache is long: each drop copies it)
SLOT_GROUPS = 4  # on a CPU, attention runs per group of slots, each over the columns its oldest response needs
SORT_EVERY = 32  # decoding steps between two sorts of the slots by age (which keeps each group's window short)


def slot_group_bounds(slots: int, groups: int) -> list[int]:
    """Where `slots` slots split into at most `groups` groups of near-equal size, none empty: the first slot of each
    group, then `slots` (`[0, 2, 4]` for 4 slots in 2 groups; `[0, 1, 2]` for 2 slots in 4)."""
    return sorted({slots * group // groups for group in range(groups + 1)})


@dataclass
class SamplerStats:
    """What a call to `sample` did: forward passes, and slot-steps spent on live responses and in all."""
    decode_steps: int = 0  # one-token forward passes over the slots
    prefills: int = 0  # forward passes that brought waiting prompts into free slots
    busy_slot_steps: int = 0  # slot-steps that produced a response token
    slot_steps: int = 0  # slot-steps computed (free slots included)
    key_value_columns: int = 0  # slot-columns of the KV cache that attention read, per layer
    extensions: int = 0  # forward passes that added follow-ups' new tokens to the contexts in their slots
    continued: int = 0  # follow-up prompts that went on in their slot over its cached context (no prefill)


def draw_tokens(logits: torch.Tensor, greedy: bool, temperature: float) -> torch.Tensor:
    """The most likely token of each row, or one drawn from softmax(logits / temperature) by inverse CDF."""
    if greedy:
        return logits.argmax(-1)
    cumulative = torch.softmax(logits.float() / temperature, dim=-1).cumsum(-1)
    uniform = torch.rand(len(logits), 1, device=logits.device) * cumulative[:, -1:]
    return torch.searchsorted(cumulative, uniform, right=True).squeeze(-1).clamp(max=logits.shape[-1] - 1)


def left_padded(sequences: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask of `sequences`, left-padded to the longest."""
    width = max(map(len, sequences))
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        if sequence:
            ids[row, width - len(sequence):] = torch.tensor(sequence)
            mask[row, width - len(sequence):] = 1
    return ids.to(device), mask.to(device)


def has_sharded_parameters(model) -> bool:
    """Whether any of `model`'s parameters is an FSDP shard (a DTensor), as outside `gathered_for_generation`."""
    return any(isinstance(parameter, DTensor) for parameter in model.parameters())


def without_autograd(sample):
    """Run `sample(model, ...)` in inference mode: no autograd bookkeeping at all (version counters, views' tracking),
    which on a small model is a good part of every tensor operation's cost, and the same numbers. Where the model's
    parameters are sharded (FSDP gathers them inside the forward, into tensors that training must use later),
    gradients are only turned off."""
    @functools.wraps(sample)
    def run(model, *args, **kwargs):
        with torch.no_grad(), torch.inference_mode(not has_sharded_parameters(model)):
            return sample(model, *args, **kwargs)
    return run


@without_autograd
def sample_with_model(model, prompt_ids: list[list[int]], samples_per_prompt: int, greedy: bool,
                      temperature: float, max_new_tokens: int, eos_ids: set, pad_id: int, slots: int,
                      refill: bool = True, banned_first_tokens: tuple = (), show_progress: bool = False,
                      desc: str = "sampling", follow_up=None, max_prompt_tokens: int = 0, fused: bool = True
                      ) -> tuple[list[list[int]], SamplerStats]:
    """Response token ids for each prompt repeated `samples_per_prompt` times (response i answers prompt
    i // samples_per_prompt), each up to and including its first EOS, and what the sampling cost.

    `slots` responses decode at once. With `refill`, waiting prompts take free slots as they free up (once an
    eighth of them are free, so that prefills stay few); without it, the next prompts wait until the whole
    batch has ended. Token ids in `banned_first_tokens` may not begin a response.

    Attention runs per group of slots over the columns from the first that the group's oldest response needs,
    and every `SORT_EVERY` steps the slots are sorted by age, so that short responses do not pay for the long
    ones' prefixes.

    With `follow_up`, a response that ends may bring a new prompt: `follow_up(i, response_i)` returns the token ids
    of a prompt to answer next (as response len(responses so far)), or None. This is how episodes run, each turn's
    next context going on as soon as its environment has answered; `max_prompt_tokens` must then bound the length of
    every prompt it may return. A follow-up that extends its row's prompt and response (an episode's context plus an
    observation) stays in its slot: one forward computes only its new tokens, over the slot's cached keys and
    values, as a prefill does for a whole prompt. Any other follow-up queues like a prompt.

    With `fused` (and a model `FusedDecodingStep` supports), decoding steps run as that step instead of the
    model's forward: the same computation in fewer operations."""
    AttentionInterface.register(WINDOWED_ATTENTION, windowed_attention)
    device = next(model.parameters()).device
    prompt_ids = list(prompt_ids)
    rows = [prompt for prompt in range(len(prompt_ids)) for _ in range(samples_per_prompt)]
    responses: list = [None] * len(rows)
    stats = SamplerStats()
    if not rows:
        return responses, stats
    slots = max(1, min(slots, len(rows)))
    eos = torch.tensor(sorted(eos_ids), device=device)
    longest_prompt = max(max_prompt_tokens, max(len(prompt_ids[prompt]) for prompt in rows))
    # every prompt that joins ends at the current column (`length`), so it always fits
    cache = SlotCache(model.config, slots, 2 * (longest_prompt + max_new_tokens) + 2, model.dtype, device,
                      length=longest_prompt)
    # groups of slots save a CPU reading key and value columns; a GPU has the bandwidth, and each group costs launches
    groups = SLOT_GROUPS if device.type == "cpu" else 1
    step = (FusedDecodingStep(model, longest_prompt + max_new_tokens + 1)
            if fused and FusedDecodingStep.supports(model) else None)
    mask = torch.zeros((slots, cache.capacity), dtype=torch.bool, device=device)
    attend, shut = (torch.tensor(value, dtype=model.dtype, device=device) for value in (0.0, -torch.inf))
    slot_row = torch.full((slots,), -1, dtype=torch.long, device=device)  # the response a slot holds; -1: free
    positions = torch.zeros(slots, dtype=torch.long, device=device)  # of each slot's next token
    starts = torch.zeros(slots, dtype=torch.long, device=device)  # column of each slot's first prompt token
    counts = torch.zeros(slots, dtype=torch.long, device=device)  # tokens generated
    generated = torch.full((slots, max_new_tokens), pad_id, dtype=torch.long, device=device)
    last_tokens = torch.full((slots,), pad_id, dtype=torch.long, device=device)
    per_slot = [mask, slot_row, positions, starts, counts, generated, last_tokens]
    queue = list(range(len(rows)))  # responses waiting for a free slot, in order
    next_row = 0  # the first of `queue` still waiting
    bar = tqdm(total=len(rows), desc=desc, disable=not show_progress, leave=False)

    def begin_responses(joined: torch.Tensor, joined_rows: list, logits: torch.Tensor) -> None:
        """Slots `joined` answer responses `joined_rows`, their first token drawn from `logits`."""
        slot_row[joined] = torch.tensor(joined_rows, dtype=torch.long, device=device)
        if banned_first_tokens:
            logits[:, list(banned_first_tokens)] = -torch.inf
        last_tokens[joined] = generated[joined, 0] = draw_tokens(logits, greedy, temperature)
        counts[joined] = 1
        candidates = torch.zeros(len(slot_row), dtype=torch.bool, device=device)
        candidates[joined] = True
        finish_ended(candidates)

    def finish_ended(candidates: torch.Tensor) -> None:
        ended = (candidates & (torch.isin(last_tokens, eos) | (counts >= max_new_tokens))).nonzero().squeeze(-1)
        going_on = []  # (slot, response, the tokens to add to the slot's context)
        ended_slots = ended.tolist()
        if not ended_slots:
            return
        for slot, row, count in zip(ended_slots, slot_row[ended].tolist(), counts[ended].tolist()):
            responses[row] = generated[slot, :count].tolist()
            following = follow_up(row, responses[row]) if follow_up is not None else None
            if following is not None:
                if len(following) > longest_prompt:
                    raise ValueError(f"a follow-up prompt of {len(following)} tokens exceeds max_prompt_tokens="
                                     f"{longest_prompt}")
                context = prompt_ids[rows[row]] + responses[row]
                prompt_ids.append(list(following))
                rows.append(len(prompt_ids) - 1)
                responses.append(None)
                if following[:len(context)] == context and len(following) > len(context):
                    # the slot's cache holds all of `context` but the response's last token
                    going_on.append((slot, len(rows) - 1, following[len(context) - 1:]))
                else:
                    queue.append(len(rows) - 1)
        slot_row[ended] = -1
        bar.update(len(ended))
        if going_on:
            extend(*zip(*going_on))

    def extend(going_on: tuple, going_on_rows: tuple, added: tuple) -> None:
        """Slots `going_on` take responses `going_on_rows`, their contexts grown by the `added` tokens: one forward
        over those tokens alone, attending to the slots' cached columns, writes their keys and values into the
        columns just before each slot's context (every slot's context ends at the current column, so those are
        free) and draws each response's first token."""
        chosen = torch.tensor(going_on, dtype=torch.long, device=device)
        first = int(starts[chosen].min())
        ids, added_mask = left_padded(list(added), pad_id, device)
        past = DynamicCache(config=model.config)
        for index, layer in enumerate(cache.layers):
            past.update(layer.key_buffer[chosen, :, first:cache.length],
                        layer.value_buffer[chosen, :, first:cache.length], index)
        attention_mask = torch.cat([mask[chosen, first:cache.length].long(), added_mask], -1)
        position_ids = positions[chosen, None] + (added_mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=ids, attention_mask=attention_mask, position_ids=position_ids, past_key_values=past,
                       use_cache=True, logits_to_keep=1).logits[:, -1].float()
        stats.extensions += 1
        stats.continued += len(going_on)
        for i, (slot, tokens) in enumerate(zip(going_on, added)):
            begin, end = int(starts[slot]) - len(tokens), int(starts[slot])
            for layer, source in zip(cache.layers, past.layers):
                layer.key_buffer[slot, :, begin:end] = source.keys[i, :, -len(tokens):]
                layer.value_buffer[slot, :, begin:end] = source.values[i, :, -len(tokens):]
            mask[slot, begin:end] = True
            starts[slot], positions[slot] = begin, positions[slot] + len(tokens)
        begin_responses(chosen, list(going_on_rows), logits)

    def fill(free: torch.Tensor) -> None:
        nonlocal next_row
        joining_rows = queue[next_row:next_row + len(free)]
        joining = [rows[row] for row in joining_rows]
        free = free[:len(joining)]
        prompts = sorted(set(joining))  # prefill each prompt once, however many samples it gets
        ids, prompt_mask = left_padded([prompt_ids[p] for p in prompts], pad_id, device)
        prefilled = DynamicCache(config=model.config)
        logits = model(input_ids=ids, attention_mask=prompt_mask,
                       position_ids=(prompt_mask.cumsum(-1) - 1).clamp(min=0), past_key_values=prefilled,
                       use_cache=True, logits_to_keep=1).logits[:, -1].float()
        stats.prefills += 1
        source = torch.tensor([prompts.index(prompt) for prompt in joining], device=device)
        cache.place(free, prefilled, source)
        mask[free] = False
        mask[free, cache.length - ids.shape[1]:cache.length] = prompt_mask[source].bool()
        positions[free] = prompt_mask[source].sum(-1)
        starts[free] = cache.length - positions[free]
        next_row += len(joining)
        begin_responses(free, joining_rows, logits[source])

    def first_column(first: int, end: int) -> int:
        """The first column any live response in slots [first, end) reads."""
        return first_columns([first, end])[0]

    def first_columns(bounds: list) -> list:
        """`first_column` of each group of slots [bounds[i], bounds[i + 1]), read from the slots in one go."""
        read_from = torch.where(active, starts, cache.length).tolist()  # a free slot reads nothing
        return [min(read_from[a:b]) for a, b in zip(bounds, bounds[1:])]

    while True:
        waiting = len(queue) - next_row
        if waiting:
            free = (slot_row < 0).nonzero().squeeze(-1)
            # prefill in batches: once an eighth of the slots is free, or (without follow-ups) all that still wait fit
            batch = (len(slot_row) // 8 or 1) if follow_up is not None else min(len(slot_row) // 8 or 1, waiting)
            if len(free) == len(slot_row) or (refill and len(free) >= batch):
                fill(free)
                continue
        active = slot_row >= 0
        live = int(active.sum())
        if live == 0:
            break
        if not waiting and live <= len(slot_row) // 2:  # the tail: shrink to the live slots
            keep = active.nonzero().squeeze(-1)
            cache.keep(keep, first_column(0, len(slot_row)))
            for i, tensor in enumerate(per_slot):
                per_slot[i] = tensor[keep]
            mask, slot_row, positions, starts, counts, generated, last_tokens = per_slot
            active = active[keep]
        # drop the columns before the oldest live prompt once there are enough of them (a joining prompt must
        # still fit before the current column)
        unread = min(int(starts[active].min()), cache.length - (longest_prompt if waiting or follow_up else 0))
        if unread >= max(DROP_COLUMNS_AT, int(cache.capacity * DROP_SHARE)) or cache.length + 1 > cache.capacity:
            cache.drop_columns(unread)
            mask[:, :cache.length] = mask[:, unread:unread + cache.length].clone()
            mask[:, cache.length:] = False
            starts -= unread
        mask[:, cache.length] = True
        if groups > 1 and stats.decode_steps % SORT_EVERY == 0:  # oldest first: each group's responses are of an age
            order = torch.argsort(torch.where(active, starts, cache.length), stable=True)
            cache.reorder(order, first_column(0, len(slot_row)))
            for i, tensor in enumerate(per_slot):
                per_slot[i] = tensor[order]
            mask, slot_row, positions, starts, counts, generated, last_tokens = per_slot
            active = active[order]
        bounds = slot_group_bounds(len(slot_row), groups)
        windows = list(zip(bounds, bounds[1:], first_columns(bounds)))
        bias = torch.where(mask[:, :cache.length + 1], attend, shut)  # added to the scores: 0 where a slot attends
        if step is not None:
            logits = step(last_tokens, positions, bias, windows, cache)
        else:
            with attention_implementation(model, WINDOWED_ATTENTION):
                logits = model(input_ids=last_tokens[:, None], position_ids=positions[:, None],
                               attention_mask={"full_attention": bias}, past_key_values=cache, use_cache=True,
                               logits_to_keep=1, slot_windows=windows).logits[:, -1]
        cache.length += 1
        positions += 1
        stats.decode_steps += 1
        stats.slot_steps += len(slot_row)
        stats.busy_slot_steps += live
        stats.key_value_columns += sum((b - a) * (cache.length - column) for a, b, column in windows)
        chosen = draw_tokens(logits, greedy, temperature)
        index = active.nonzero().squeeze(-1)
        generated[index, counts[index]] = chosen[index]
        counts[index] += 1
        last_tokens.copy_(chosen)
        finish_ended(active)
    bar.close()
    return [trim_at_eos(response, eos_ids) for response in responses], stats


def trim_at_eos(token_ids: list, eos_ids: set) -> list:
    """Tokens up to and including the first EOS (all of them when no EOS came)."""
    for i, token in enumerate(token_ids):
        if token in eos_ids:
            return token_ids[: i + 1]
    return token_ids
