"""Value-guided best-first search over reasoning steps at test time, and the value head that guides it.

A node is a partial response that ends at a step boundary (a token whose text ends a step: the `.` after a
countdown branch's `no`/`yes`, the `,` after a partial product) or at EOS. Expanding a node samples `k`
continuations of it, each to its next boundary, from the policy; the nodes of every open search are expanded in
one batched call. The frontier is ordered by f = g + h, A*'s form: g is the negative log-probability of the
partial response under the policy, h = `weight` x (1 - v), with v the value head's estimate of the reward the
finished response will earn. The first half of the budget (`branch_share`, less when that would leave under one
response's length) branches; the rest commits: the best open node is continued one step at a time, one
continuation each, until it ends, then the next best. The search stops when its token budget cannot pay for
another step, and returns the finished response the value head rates best.
It never sees the task's reward: at test time the answer is unknown.

The value head is a small network on the policy's last hidden state at a step boundary, fit by mean squared error
to the final reward of responses the policy itself sampled for training prompts.

This module knows nothing of models or tasks: the caller passes `sample` and `score` (see `value_guided_search`).
"""
import functools
import heapq
import itertools
from dataclasses import dataclass, field

import torch

BOUNDARY_CHARACTERS = (".", ",")  # the end of a countdown branch ("... vs 46 no.") and of a partial product


@functools.lru_cache(maxsize=4)
def boundary_token_ids(tokenizer) -> frozenset:
    """Ids of the tokens whose text ends with one of `BOUNDARY_CHARACTERS` (decoding the whole vocabulary once per
    tokenizer: a Qwen vocabulary takes seconds, and a search section asks for them at every budget)."""
    texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    return frozenset(i for i, text in enumerate(texts) if text.rstrip().endswith(BOUNDARY_CHARACTERS))


def step_ends(response_ids: list, boundary_ids: set, stride: int = 0) -> list:
    """Indices into `response_ids` of the tokens that end a step: every boundary token and the last token; with
    `stride` > 0, every `stride`-th token and the last instead (for tasks without boundaries)."""
    if not response_ids:
        return []
    if stride > 0:
        ends = list(range(stride - 1, len(response_ids), stride))
    else:
        ends = [i for i, token in enumerate(response_ids) if token in boundary_ids]
    return ends if ends and ends[-1] == len(response_ids) - 1 else ends + [len(response_ids) - 1]


class ValueHead(torch.nn.Module):
    """v(prefix) in [0, 1] from the policy's last hidden state at the prefix's last token."""

    def __init__(self, hidden_size: int, width: int = 64):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(hidden_size, width), torch.nn.Tanh(), torch.nn.Linear(width, 1))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(hidden_states).squeeze(-1))


def fit_value_head(features: torch.Tensor, targets: torch.Tensor, epochs: int = 200, lr: float = 3e-3,
                   batch_size: int = 256, seed: int = 0) -> tuple[ValueHead, list]:
    """A value head fit by mean squared error to `targets` (final rewards, one per row of `features`); returns it and
    the mean loss of each epoch."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    head = ValueHead(features.shape[-1])
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.01)
    features, targets = features.float(), targets.float()
    losses = []
    for _ in range(epochs):
        order, total = torch.randperm(len(features), generator=generator), 0.0
        for batch in order.split(batch_size):
            loss = torch.nn.functional.mse_loss(head(features[batch]), targets[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        losses.append(total / len(features))
    head.eval()
    return head, losses


def calibration(predicted: torch.Tensor, actual: torch.Tensor, bins: int = 10) -> list:
    """(mean predicted, mean actual, count) of each non-empty bin of predicted values in [0, 1]."""
    index = (predicted.clamp(0, 1) * bins).long().clamp(max=bins - 1)
    return [(float(predicted[index == b].mean()), float(actual[index == b].float().mean()), int((index == b).sum()))
            for b in range(bins) if (index == b).any()]


@torch.no_grad()
def hidden_states_and_log_probs(model, prompts: list, responses: list, pad_id: int, batch_size: int = 64):
    """For each (prompt, response) pair of token-id lists: the policy's last hidden state at every response token
    ([len(response), hidden], the prompt's last token's for an empty response, so [1, hidden]) and log pi(response |
    prompt) summed over the response's tokens (temperature 1)."""
    device = next(model.parameters()).device
    states, log_probs = [], []
    for start in range(0, len(prompts), batch_size):
        sequences = [list(p) + list(r) for p, r in zip(prompts[start:start + batch_size], responses[start:start + batch_size])]
        width = max(map(len, sequences))
        ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, sequence in enumerate(sequences):  # right-padded: positions count from each sequence's start
            ids[row, :len(sequence)], mask[row, :len(sequence)] = torch.tensor(sequence), 1
        # the decoder's last (normed) hidden states; the output layer only where a response token is predicted, so
        # that a large vocabulary costs [response tokens, vocabulary] a row, not [batch, width, vocabulary]
        hidden = model.base_model(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
        output_layer = model.get_output_embeddings()
        for row, (prompt, response) in enumerate(zip(prompts[start:start + batch_size], responses[start:start + batch_size])):
            first, end = len(prompt), len(prompt) + len(response)
            states.append((hidden[row, first:end] if response else hidden[row, first - 1:first]).float())
            if not response:
                log_probs.append(0.0)
                continue
            predicted = output_layer(hidden[row, first - 1:end - 1]).float().log_softmax(-1)
            targets = torch.tensor(response, dtype=torch.long, device=device)
            log_probs.append(float(predicted.gather(-1, targets[:, None]).sum()))
    return states, log_probs


def value_examples(model, prompts: list, responses: list, rewards: list, boundary_ids: set, pad_id: int,
                   stride: int = 0, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """A value head's training set: the policy's hidden state at each step end (`step_ends`) of each response, and
    that response's final reward."""
    states, _ = hidden_states_and_log_probs(model, prompts, responses, pad_id, batch_size)
    features, targets = [], []
    for state, response, reward in zip(states, responses, rewards):
        ends = step_ends(list(response), boundary_ids, stride) or [0]
        features.append(state[ends])
        targets += [float(reward)] * len(ends)
    return torch.cat(features), torch.tensor(targets)


def model_scorer(model, value_head: ValueHead, prompts: list, pad_id: int, batch_size: int = 64):
    """`score` for `value_guided_search`: log pi(response | prompt) and the value head at the response's last token."""
    def score(prompt_indices: list, responses: list) -> tuple[list, list]:
        states, log_probs = hidden_states_and_log_probs(model, [prompts[i] for i in prompt_indices], responses, pad_id,
                                                        batch_size)
        with torch.no_grad():
            values = [float(value_head(state[-1])) for state in states]
        return log_probs, values
    return score


@dataclass(order=True)
class Node:
    """A partial (or, when `ended`, finished) response on a search's frontier, ordered by `priority` (f), then by
    the order nodes were made in."""
    priority: float
    order: int
    response_ids: tuple = field(compare=False)
    log_prob: float = field(compare=False)  # log pi(response | prompt): -g
    value: float = field(compare=False)  # the value head's estimate at the response's last token
    ended: bool = field(compare=False)  # EOS reached, or the response's length cap


def priority(log_prob: float, value: float, weight: float) -> float:
    """f = g + h: g = -log pi(prefix), h = `weight` x (1 - value)."""
    return -log_prob + weight * (1.0 - value)


@dataclass
class SearchResult:
    """One search's answer and what it cost."""
    response_ids: list  # the finished response rated best (the best partial one when none finished)
    value: float
    sampled_tokens: int  # tokens drawn from the policy, never more than the budget
    expansions: int  # nodes expanded
    finished: int  # finished responses found


def value_guided_search(prompts: list, sample, score, budget: int, k: int, weight: float, max_response_tokens: int,
                        eos_ids: set, expand_per_round: int = 1, branch_share: float = 0.5,
                        finish_tokens: int = 0) -> list:
    """Best-first search from each prompt in `prompts` (token ids), within `budget` sampled tokens per prompt.

    `sample(contexts, k, max_new_tokens)` returns, for each context (prompt and partial response, token ids), `k`
    continuations that stop after a step boundary, at EOS or after `max_new_tokens` tokens.
    `score(prompt_indices, response_ids)` returns, for each response (token ids after prompt `prompt_indices[i]`), its
    log-probability under the policy and the value head's estimate at its last token.

    Two phases. While a search has spent less than `branch_share` of its budget, and has more than `finish_tokens`
    (about one response's length) left, it branches: each round pops the `expand_per_round` best open nodes of every
    search and samples `k` continuations of each. Then it commits: it pops its best open node and continues it one
    step at a time, one continuation each, until it ends, then the next best, until the budget is spent (branching
    alone would spend a small budget on the first steps of many responses and finish none of them). Each continuation may draw at most an equal share of its search's remaining
    budget (and of the response's remaining length), rounded down to a power of two, so a search never samples
    more than `budget` tokens and a round makes one `sample` call per distinct cap."""
    branch_until = min(branch_share * budget, budget - finish_tokens)  # spent tokens at which branching stops
    if budget < 1 or k < 1 or expand_per_round < 1 or not 0.0 <= branch_share <= 1.0:
        raise ValueError(f"budget ({budget}), k ({k}) and expand_per_round ({expand_per_round}) must be >= 1 and "
                         f"branch_share ({branch_share}) in [0, 1]")
    counter = itertools.count()
    logs, values = score(list(range(len(prompts))), [[] for _ in prompts])
    frontiers = [[Node(priority(log, value, weight), next(counter), (), log, value, False)]
                 for log, value in zip(logs, values)]
    spent, expansions = [0] * len(prompts), [0] * len(prompts)
    finished, over = [[] for _ in prompts], [False] * len(prompts)
    committed: list = [None] * len(prompts)  # the node a committing search continues
    while True:
        popped = []  # (prompt, node, continuations, tokens each of them may draw, whether the search commits)
        for p, frontier in enumerate(frontiers):
            if over[p]:
                continue
            branching = spent[p] < branch_until
            if branching:
                nodes = [heapq.heappop(frontier) for _ in range(min(expand_per_round, len(frontier)))]
            elif committed[p] is not None:
                nodes = [committed[p]]
            else:
                nodes = [heapq.heappop(frontier)] if frontier else []
            continuations = k if branching else 1
            share = (budget - spent[p]) // (continuations * len(nodes)) if nodes else 0
            for node in nodes:
                allowed = min(share, max_response_tokens - len(node.response_ids))
                if allowed >= 1:  # rounded down to a power of two: a round makes a few `sample` calls, not one a search
                    popped.append((p, node, continuations, 1 << (allowed.bit_length() - 1), not branching))
                elif node is not committed[p]:
                    heapq.heappush(frontier, node)
            over[p] = share < 1  # it cannot pay for another expansion (or has nothing left to expand)
        if not popped:
            break
        groups: dict = {}  # one `sample` call per (continuations, cap)
        for index, (_, _, continuations, allowed, _) in enumerate(popped):
            groups.setdefault((continuations, allowed), []).append(index)
        children = []
        for (continuations, allowed), indices in groups.items():
            contexts = [list(prompts[popped[i][0]]) + list(popped[i][1].response_ids) for i in indices]
            for i, drawn in zip(indices, sample(contexts, continuations, allowed)):
                p, node, _, _, committing = popped[i]
                expansions[p] += 1
                committed[p] = None
                for continuation in list(drawn)[:continuations]:
                    continuation = tuple(continuation)[:allowed]
                    spent[p] += len(continuation)
                    if continuation:
                        children.append((p, node.response_ids + continuation, committing))
        logs, values = score([p for p, _, _ in children], [list(response) for _, response, _ in children])
        for (p, response, committing), log, value in zip(children, logs, values):
            ended = response[-1] in eos_ids or len(response) >= max_response_tokens
            node = Node(priority(log, value, weight), next(counter), response, log, value, ended)
            if ended:
                finished[p].append(node)
            elif committing:
                committed[p] = node
            else:
                heapq.heappush(frontiers[p], node)
    results = []
    for p in range(len(prompts)):
        partial = frontiers[p] + ([committed[p]] if committed[p] is not None else [])
        pool = finished[p] or [n for n in partial if n.response_ids] or [Node(0.0, 0, (), 0.0, 0.0, False)]
        best = max(pool, key=lambda n: (n.value, -n.order))
        results.append(SearchResult(list(best.response_ids), best.value, spent[p], expansions[p], len(finished[p])))
    return results
