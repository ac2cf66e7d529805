"""Trials of what makes the tiny base model learn to read a neighbouring tile off the lake: builds a FrozenLake base
model from a changed recipe into `--out` (a scratch folder, never the cache: the notebook's own recipe is unchanged),
then probes it as `frozenlake_probe.py` does. Prints one JSON object: the build's facts and the probe's report.

What a trial may change besides config fields (`--set`):
- `--drills SHARE`: that share of the corpus's FrozenLake documents is a drill instead of a played episode: a prompt
  and one worked `neighbours` turn (every neighbour read, then a move along a shortest path). The drill's lake is
  the document's own problem, or with `--drill-ice P` a fresh random map of the same size whose tiles are ice with
  chance P (more holes, so more of the lookups are holes), the player on a random ice tile. With `--drills-beside`
  the drill comes after the episode instead of in its place: every document is an episode, then (EOS between) a
  drill; the corpus keeps its size in tokens, so it holds fewer, longer documents.
- `--rope-theta T`: the model's rotary base (the default recipe's is transformers' 10,000).
- `--lookup-weight K`: pretraining's loss weighs the tokens a worked turn reads off the lake (the tile after `Down `,
  `Right `, `Up ` or `Left ` in a `neighbours` turn) K times as much as any other token (a weighted mean over the
  block's tokens): the same corpus, its lookups louder.

    .venv/bin/python tools/frozenlake_lookup_trial.py --out /tmp/trial --set base_lr=0.001
    .venv/bin/python tools/frozenlake_lookup_trial.py --out /tmp/trial --drills 0.8 --drill-ice 0.6 --set base_lr=0.001
    .venv/bin/python tools/frozenlake_lookup_trial.py --out /tmp/trial --drills 1 --drill-ice 0.5 --drills-beside
    .venv/bin/python tools/frozenlake_lookup_trial.py --out /tmp/trial --lookup-weight 10
"""
import contextlib
import dataclasses
import json
import random
import sys
import types

import torch
from gymnasium.envs.toy_text.frozen_lake import generate_random_map

from base_model_modes import config_override
from frozenlake_probe import probe_report
from stage0_tools import ROOT, base_model_arguments, load_notebook_module

sys.path.insert(0, str(ROOT))
from tinyzero.frozenlake import ACTION_NAMES, EDGE, TILES, best_move, neighbours_turn  # noqa: E402


def drill(nb, problem, config, rng: random.Random, drill_ice: float | None, heldout: set) -> str | None:
    """A prompt and one worked `neighbours` turn on `problem`'s lake, or with `drill_ice` on a fresh random map of
    its size with a random start, drawn again while it is a held-out lake (`problem_key`: on 4x4 a random map often
    is one); None where the player has no route to the goal."""
    if drill_ice is not None:
        side = len(problem.lake.rows)
        while True:
            rows = [row.replace("S", "F") for row in generate_random_map(size=side, p=drill_ice,
                                                                         seed=rng.randrange(2 ** 31))]
            r, c = rng.choice([(r, c) for r in range(side) for c in range(side) if rows[r][c] == "F"])
            rows[r] = rows[r][:c] + "S" + rows[r][c + 1:]
            problem = dataclasses.replace(problem, lake=dataclasses.replace(problem.lake, rows=tuple(rows)))
            if nb.problem_key(problem) not in heldout:
                break
    lake = problem.lake
    move = best_move(lake.rows, lake.start)
    if move is None:
        return None
    return (f"{nb.format_prompt(problem, config.prompt_template)} {neighbours_turn(lake.rows, lake.start, move)} "
            f"</think> <answer> {ACTION_NAMES[move]} </answer>")


class LookupWeighted(torch.nn.Module):
    """A causal LM whose loss (for `labels` equal to `input_ids`, as pretraining passes them) weighs each token that a
    worked `neighbours` turn reads off the lake `weight` times as much as the others: a tile (`_`, `O`, `G`, or the
    `e` of `edge`) right after a move's name and a space."""

    def __init__(self, model, tokenizer, weight: float):
        super().__init__()
        self.model, self.weight = model, weight
        encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]
        self.reads = [torch.tensor(encode(f" {name} ")) for name in ACTION_NAMES]
        self.tiles = torch.tensor(sorted({encode(seen)[0] for seen in (*TILES.values(), EDGE)}))  # edge: its `e`

    def lookups(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Where `input_ids` [blocks, tokens] holds a tile read off the lake after a move's name."""
        found = torch.zeros_like(input_ids, dtype=torch.bool)
        for read in self.reads:
            width = len(read)
            windows = input_ids.unfold(1, width, 1)  # [blocks, tokens - width + 1, width]
            after = (windows == read).all(-1)[:, :-1]  # the read ends just before position width, width + 1, ...
            found[:, width:] |= after
        return found & torch.isin(input_ids, self.tiles)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor):
        logits = self.model(input_ids=input_ids).logits[:, :-1]
        targets = labels[:, 1:]
        losses = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                                                   reduction="none")
        weights = 1.0 + (self.weight - 1.0) * self.lookups(labels)[:, 1:].reshape(-1).float()
        return types.SimpleNamespace(loss=(losses * weights).sum() / weights.sum())


def patched_recipe(nb, drills: float, drill_ice: float | None, rope_theta: float | None, heldout: set,
                   beside: bool = False, lookup_weight: float = 1.0) -> None:
    """Change the notebook module's corpus and model config in place, as the trial asks: with `beside`, a drill
    follows its episode (EOS between them, as between documents) instead of taking its place."""
    episode, model_config = nb.frozenlake_document, nb.tiny_qwen2_config

    def document(problem, config, rng):
        if drills and rng.random() < drills:
            text = drill(nb, problem, config, rng, drill_ice, heldout)
            if text is not None:
                return episode(problem, config, rng) + nb.EOS_TOKEN + text if beside else text
        return episode(problem, config, rng)

    def qwen2_config(config, tokenizer):
        made = model_config(config, tokenizer)
        if rope_theta is not None:
            made.rope_parameters = {"rope_theta": rope_theta, "rope_type": "default"}
        return made

    nb.frozenlake_document, nb.tiny_qwen2_config = document, qwen2_config
    if lookup_weight != 1.0:
        pretrain = nb.pretrain

        def weighted_pretrain(model, blocks, config, generator):
            return pretrain(LookupWeighted(model, nb.build_char_tokenizer(), lookup_weight), blocks, config, generator)

        nb.pretrain = weighted_pretrain


def main() -> None:
    parser = base_model_arguments(__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="the folder the trial's base model is written to (must not exist)")
    parser.add_argument("--drills", type=float, default=0.0, help="share of FrozenLake documents that are drills")
    parser.add_argument("--drill-ice", type=float, default=None, help="drills on fresh maps with this chance of ice")
    parser.add_argument("--drills-beside", action="store_true",
                        help="each drill follows its episode instead of replacing it")
    parser.add_argument("--rope-theta", type=float, default=None, help="the model's rotary base")
    parser.add_argument("--lookup-weight", type=float, default=1.0,
                        help="pretraining's loss weight on the tiles a worked turn reads off the lake")
    parser.add_argument("--lakes", type=int, default=None, help="held-out lakes per level to probe (default: all)")
    parser.add_argument("--set", dest="overrides", type=config_override, action="append", default=[],
                        metavar="FIELD=VALUE", help="change a config field (repeatable)")
    args = parser.parse_args()
    if not 0.0 <= args.drills <= 1.0:
        parser.error(f"--drills {args.drills}: a share from 0 to 1")
    if args.drill_ice is not None and not 0.0 < args.drill_ice <= 1.0:
        parser.error(f"--drill-ice {args.drill_ice}: a chance above 0, at most 1")
    nb = load_notebook_module()
    overrides = {"tasks": ["frozenlake"], "seed": args.seed} | dict(args.overrides)
    config = nb.make_config(args.preset, **overrides, cache_dir=args.cache_dir)
    datasets = nb.build_datasets(config)
    heldout = nb.heldout_keys(datasets)
    if args.lookup_weight <= 0:
        parser.error(f"--lookup-weight {args.lookup_weight}: a weight above 0")
    patched_recipe(nb, args.drills, args.drill_ice, args.rope_theta, heldout, args.drills_beside, args.lookup_weight)
    with contextlib.redirect_stdout(sys.stderr):  # the build's messages; the report goes to stdout
        facts = nb.build_base_model(config, heldout, args.out)
    facts.pop("losses")
    tokenizer, model = nb.load_tokenizer(args.out), nb.load_causal_lm(args.out, config, nb.torch.device("cpu"))
    trial = {"drills": args.drills, "drill_ice": args.drill_ice, "drills_beside": args.drills_beside,
             "rope_theta": args.rope_theta, "lookup_weight": args.lookup_weight}
    print(json.dumps(probe_report(nb, model, tokenizer, datasets, config, args.lakes,
                                  {"overrides": overrides, "trial": trial, "build": facts}), indent=1))


if __name__ == "__main__":
    main()
