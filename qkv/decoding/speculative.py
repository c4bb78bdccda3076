"""Speculative decoding: a cheap guesser proposes K tokens, the model checks them all in one forward pass.

A decoder spends most of a step reading its weights, whatever the number of tokens fed; checking K guessed tokens
costs about as much as producing one. Each round (Leviathan et al. 2023, Algorithm 1; Chen et al. 2023, Alg. 2):

1. *Propose*: the draft (a small model of the same vocabulary, any family: softmax, RetNet, RWKV, ...) continues
   the sequence by K tokens, one at a time; or, with prompt lookup (Saxena 2023), the K tokens that followed the
   latest earlier occurrence of the sequence's last n-gram are copied, with no second model at all.
2. *Verify*: the target reads [the last accepted token, the K guesses] in one forward: K + 1 next-token
   distributions p_0 .. p_K.
3. *Accept*: greedy keeps the guesses up to the first one that is not the target's argmax, then adds the target's
   own token there (or, all accepted, a bonus token from p_K): exactly the target's greedy tokens. Sampling keeps
   guess x_i with probability min(1, p_i(x_i) / q_i(x_i)) and, at the first rejection, samples from
   norm(max(0, p_i - q_i)): every emitted token is then distributed exactly as p_i (Leviathan et al., Appendix A.1).
4. *Rewind*: both caches go back to the accepted length. A KV cache is cropped (later positions are written
   over); a recurrent state (RetNet, RWKV, ...) holds no per-token history, so it is restored from a snapshot
   (``Cache.snapshot`` / ``Cache.restore``), and the target re-reads its accepted tokens.

The invariant between rounds: the target has read every token but the last one (``pending``), so a round's
verify pass always starts with it; the draft has read ``draft_cache.length`` tokens and catches up on the rest.

Past the learned positions (``sliding.py``): a round proposes only guesses that still fit both models' position
tables; a draft at its end proposes nothing more (rounds are then the target's plain cached steps), and once the
sequence is longer than the target's W positions every later token is the target's own prediction from its last W
tokens, one full pass each, no guesses: plain sliding decoding, the same tokens as ``generate`` without a draft.
One sequence at a time (B = 1), as transformers' assisted generation; the logits controls, temperature, top-k/p,
min-p and typical-p apply to both distributions. ``adaptive_draft``: K grows by 2 after a round that accepted
everything and shrinks by 1 after a rejection (transformers' heuristic), between 1 and 4 x num_draft_tokens.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models import context_window, decodable_positions, decoding_of
from ..nn.cache import RecurrentCache
from ..ops.checks import trusted_values
from .config import GenerationConfig, Resolved
from .finite import refuse
from .outputs import GenerateOutput
from .sample import warp
from .sliding import sliding_context


@dataclass
class SpeculativeStats:
    """What a run did: rounds (target forward passes, each checking its guesses, if any), proposed and accepted
    guesses, generated tokens; slid: tokens the target predicted past its learned positions from its last W tokens
    (no guesses then: ``sliding.py``). acceptance_rate = accepted / proposed; tokens_per_round = generated /
    rounds."""
    rounds: int = 0
    proposed: int = 0
    accepted: int = 0
    generated: int = 0
    slid: int = 0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0

    @property
    def tokens_per_round(self) -> float:
        return self.generated / self.rounds if self.rounds else 0.0

    def describe(self) -> str:
        """One line for a person: how many guesses the target kept, and the tokens each of its passes gave."""
        line = (f"speculative decoding accepted {self.accepted} of {self.proposed} guessed tokens "
                f"({100 * self.acceptance_rate:.1f}%): {self.generated} tokens in {self.rounds} passes of the model "
                f"({self.tokens_per_round:.2f} per pass)")
        if self.slid:
            line += f"; the last {self.slid} past its learned positions, from its sliding window alone"
        return line


def speculative_generate(model, input_ids: torch.Tensor, config: GenerationConfig, *, attention_mask=None,
                         draft_model=None, decoder_input_ids=None, generator=None, stop=None, logits_processor=None,
                         stats: SpeculativeStats | None = None):
    """``qkv.generate`` with ``draft_model`` or ``prompt_lookup_num_tokens`` lands here. Returns (1, T + L) ids, or
    a ``GenerateOutput`` with ``return_scores``; ``stats`` (a ``SpeculativeStats``) is filled when given."""
    lookup = config.prompt_lookup_num_tokens
    if draft_model is not None and lookup is not None:
        raise ValueError("pass draft_model or prompt_lookup_num_tokens, not both: prompt lookup is the draft")
    _check(model, input_ids, attention_mask, draft_model)
    plan = config.resolved(model, input_ids.shape[1], logits_processor=logits_processor)
    refused = [(plan.num_beams > 1, f"num_beams={plan.num_beams}"),
               (plan.num_return_sequences > 1, f"num_return_sequences={plan.num_return_sequences}"),
               (plan.repetition_penalty != 1.0, f"repetition_penalty={plan.repetition_penalty}"),
               (bool(plan.stop_strings) or stop is not None, "stop_strings / stop"),
               (plan.compile, "compile=True"), (decoder_input_ids is not None, "decoder_input_ids")]
    for bad, what in refused:
        if bad:
            raise ValueError(f"speculative decoding (draft_model / prompt_lookup_num_tokens) does not take {what}: "
                             f"it decodes one sequence greedily or by sampling, with eager steps")
    needed, bound = input_ids.shape[1] + plan.max_new_tokens, decodable_positions(model.config)
    if bound is not None and needed > bound and context_window(model) is None:  # (a draft just stops guessing)
        raise ValueError(f"max_new_tokens={plan.max_new_tokens} with a {input_ids.shape[1]}-token prompt needs "
                         f"{needed} positions, more than model's {bound} learned positions (max_positions), and "
                         f"it does not slide its context past them: {decoding_of(model).no_slide}")
    with torch.inference_mode():
        run = _Speculation(model, draft_model, input_ids.long(), plan, generator,
                           stats if stats is not None else SpeculativeStats())
        with trusted_values():  # rounds feed ids checked above or chosen from the shared vocabulary, at positions
            tokens, logprobs = run.decode()  # checked against max_positions: no host reads to re-check them
    sequences = torch.cat([input_ids.long(), torch.tensor([tokens], dtype=torch.long, device=input_ids.device)], 1)
    if not plan.return_scores:
        return sequences
    logprobs = torch.tensor([logprobs], dtype=torch.float32, device=input_ids.device)
    return GenerateOutput(sequences, logprobs, logprobs.sum(-1), sliding=sliding_context(model, input_ids.shape[1],
                          len(run.seq) - run.prompt), speculative=run.stats)


def _check(model, input_ids, attention_mask, draft_model) -> None:
    """One unpadded sequence of token ids, decoder-only models of one vocabulary."""
    if not isinstance(model, torch.nn.Module) or not hasattr(model, "config"):
        raise TypeError(f"model must be a qkv model (qkv.build, qkv.load, qkv.from_hf), got {type(model).__name__}")
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.shape[0] != 1 \
            or input_ids.shape[1] < 1:
        raise ValueError(f"speculative decoding takes one sequence, input_ids of shape (1, T) (as transformers' "
                         f"assisted generation), got "
                         f"{tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__}")
    V = model.config.vocab_size
    if input_ids.dtype not in (torch.long, torch.int, torch.int16) or bool(((input_ids < 0) | (input_ids >= V)).any()):
        raise ValueError(f"input_ids must be integer token ids in [0, {V}) (vocab_size), got {input_ids.dtype} "
                         f"values in [{input_ids.min().item()}, {input_ids.max().item()}]")
    if attention_mask is not None and not bool(attention_mask.bool().all()):
        raise ValueError("speculative decoding takes one unpadded sequence: attention_mask must be all ones or None")
    for name, m in (("model", model), ("draft_model", draft_model)):
        if m is not None and decoding_of(m).has_source:
            raise ValueError(f"speculative decoding continues a prompt: {name} must be a decoder-only model, got "
                             f"family {m.config.family!r}")
    if draft_model is not None and draft_model.config.vocab_size != model.config.vocab_size:
        raise ValueError(f"draft_model must share the target's vocabulary: vocab_size {draft_model.config.vocab_size}"
                         f" vs the target's {model.config.vocab_size}")


class _Speculation:
    """One run: the target's and the draft's caches, the sequence so far (host list: B = 1), the rounds."""

    def __init__(self, model, draft, input_ids, plan: Resolved, generator, stats: SpeculativeStats):
        self.model, self.draft, self.plan, self.stats, self.generator = model, draft, plan, stats, generator
        lookup = plan.prompt_lookup_num_tokens
        K = lookup if lookup is not None else plan.num_draft_tokens
        self.K, self.adaptive = K, plan.adaptive_draft
        self.lookup_ngram = plan.prompt_lookup_max_ngram if lookup is not None else None
        self.decoding, self.inputs = decoding_of(model), (input_ids, None)  # what a refusal re-runs (finite.py)
        self.k_max = 4 * K if self.adaptive else K
        self.seq = input_ids[0].tolist()
        self.prompt = len(self.seq)
        self.device = input_ids.device
        # W: the target's window past its learned positions (None: no table end); the draft's table, if any
        self.window = context_window(model)
        self.draft_end = None if draft is None else decodable_positions(draft.config)
        capacity = self.prompt + plan.max_new_tokens + self.k_max + 1
        if self.window is not None:
            capacity = min(capacity, self.window + self.k_max + 1)
        self.cache = model.new_cache(1, capacity, rewind=self.k_max + 1)
        self.recurrent = any(isinstance(layer.mixer, RecurrentCache) for layer in self.cache.layers)
        self.eos = set(plan.eos_ids)
        if 1 < len(self.seq) and not self._past_window():  # the target reads all but the last token; every round
            model(input_ids[:, :-1], self.cache)           # starts with that one
        self.draft_cache = None if draft is None else draft.new_cache(1, capacity, rewind=self.k_max + 1)

    # -- scores: generate's pipeline, one position at a time ---------------------------------------------------
    def _scores(self, logits: torch.Tensor, so_far: list[int]) -> torch.Tensor:
        """(V,) logits of the token after ``so_far`` -> (V,) processed scores (controls, then sampling's filters)."""
        plan = self.plan
        scores = logits.float()[None]  # (1, V)
        if plan.controls.active:
            seq = torch.tensor([so_far], device=self.device) if plan.controls.needs_sequences else None
            scores = plan.controls.apply(scores, seq, length=len(so_far), prompt_length=self.prompt,
                                         max_length=self.prompt + plan.max_new_tokens, eos=plan.eos)
        if plan.do_sample:
            scores = warp(scores, plan)
        return scores[0]

    # -- proposing ---------------------------------------------------------------------------------------------
    def _propose(self, k: int) -> tuple[list[int], list[torch.Tensor | None]]:
        """k guessed tokens and, for sampling with a draft model, the (V,) distribution each was drawn from (None:
        the guess was certain, q = a point mass: greedy drafts and prompt lookup)."""
        if self.draft is None:
            return self._lookup(k), [None] * k
        cache = self.draft_cache
        pending = torch.tensor([self.seq[cache.length:]], device=self.device)  # what the draft has not read yet
        logits = self.draft(pending, cache, last_only=True)[0, -1]
        guesses, dists, self.draft_snaps = [], [], [cache.snapshot()]
        for i in range(k):
            scores = self._scores(logits, self.seq + guesses)
            if self.plan.do_sample:
                q = scores.softmax(-1)
                token = int(torch.multinomial(q, 1, generator=self.generator))
                dists.append(q)
            else:
                token = int(scores.argmax())
                dists.append(None)
            guesses.append(token)
            if i + 1 < k:  # the last guess need not be read: its distribution is not needed
                logits = self.draft(torch.tensor([[token]], device=self.device), cache, last_only=True)[0, -1]
                self.draft_snaps.append(cache.snapshot())
        return guesses, dists

    def _lookup(self, k: int) -> list[int]:
        """Prompt lookup: the up to k tokens that followed the latest earlier occurrence of the longest matching
        tail n-gram (n <= lookup_ngram) of the sequence; [] when no tail occurs earlier."""
        seq = self.seq
        for n in range(min(self.lookup_ngram, len(seq) - 1), 0, -1):
            tail = seq[-n:]
            for start in range(len(seq) - n - 1, -1, -1):
                if seq[start: start + n] == tail:
                    return seq[start + n: start + n + k]
        return []

    # -- the position tables' ends ------------------------------------------------------------------------------
    def _past_window(self) -> bool:
        """The sequence is longer than the target's learned positions: its next token comes from the last W."""
        return self.window is not None and len(self.seq) > self.window

    def _fitting(self, k: int) -> int:
        """How many of k guesses fit both tables: the target reads them at positions len(seq) .. len(seq) + k - 1,
        the draft reads the sequence and k - 1 of them (positions up to len(seq) + k - 2)."""
        n = len(self.seq)
        if self.window is not None:
            k = min(k, self.window - n)
        if self.draft_end is not None:
            k = min(k, self.draft_end - n + 1)
        return max(k, 0)

    # -- one round ---------------------------------------------------------------------------------------------
    def decode(self) -> tuple[list[int], list[float]]:
        plan, stats = self.plan, self.stats
        generated, logprobs = [], []
        while len(generated) < plan.max_new_tokens:
            room = plan.max_new_tokens - len(generated) - 1  # the round's own token always fits
            if self._past_window():  # plain sliding decoding: the target alone, over its last W tokens
                window = torch.tensor([self.seq[-self.window:]], device=self.device)  # (1, W)
                logits, guesses, dists, k = self.decoding.window_logits(self.model, window, None), [], [], 0
                stats.slid += 1
            else:
                k = self._fitting(min(self.K, room))
                guesses, dists = self._propose(k) if k > 0 else ([], [])
                k = len(guesses)
                fed = self.cache.length
                snap = self.cache.snapshot() if self.recurrent and k else None
                tokens = torch.tensor([[self.seq[-1]] + guesses], device=self.device)  # (1, 1 + k)
                logits = self.model(tokens, self.cache)[0]  # (1 + k, V): p_0 .. p_k
            if not bool(torch.isfinite(logits).all()):  # one more read in a round that reads its tokens anyway
                refuse(self, len(generated) if generated else None)
            accepted, new, chosen = self._accept(logits, guesses, dists)
            stats.rounds += 1
            stats.proposed += k
            stats.accepted += accepted
            if accepted < k:  # rewind the target to seq + accepted guesses (its own token is the new pending one)
                if self.recurrent:
                    self.cache.restore(snap)
                    self.model(tokens[:, : 1 + accepted], self.cache)
                else:
                    self.cache.crop(fed + 1 + accepted)
            if self.draft is not None and k:
                self.draft_cache.restore(self.draft_snaps[min(accepted, len(self.draft_snaps) - 1)])
            if self.adaptive and k:
                self.K = min(self.K + 2, self.k_max) if accepted == k else max(self.K - 1, 1)
            for token, lp in zip(new, chosen):
                self.seq.append(token)
                generated.append(token)
                logprobs.append(lp)
                if token in self.eos:
                    stats.generated += len(generated)
                    return generated, logprobs
        stats.generated += len(generated)
        return generated, logprobs

    def _accept(self, logits: torch.Tensor, guesses: list[int], dists: list) -> tuple[int, list[int], list[float]]:
        """(accepted guesses, the round's new tokens, their log-probabilities under the target's scores)."""
        if not self.plan.do_sample and not self.plan.controls.active:
            # plain greedy: every position's choice at once, one read back to the host
            scores = logits.float()  # (1 + k, V)
            best = scores.argmax(-1)
            agree = (best[: len(guesses)] == torch.tensor(guesses, dtype=torch.long, device=best.device)).tolist()
            accepted = agree.index(False) if False in agree else len(guesses)
            new = best[: accepted + 1]
            chosen = scores[: accepted + 1].log_softmax(-1).gather(1, new[:, None]).squeeze(1)
            return accepted, new.tolist(), chosen.tolist()
        new, chosen = [], []
        for i in range(len(guesses) + 1):
            scores = self._scores(logits[i], self.seq + new)
            logp = scores.log_softmax(-1)
            guess = guesses[i] if i < len(guesses) else None
            if not self.plan.do_sample:
                token = int(scores.argmax())
                new.append(token)
                chosen.append(float(logp[token]))
                if token != guess:  # the target's own token (or the bonus one): the round ends here
                    return i, new, chosen
                continue
            p = logp.exp()
            if guess is not None:
                q_x = 1.0 if dists[i] is None else float(dists[i][guess])
                r = float(torch.rand((), generator=self.generator))
                if r * q_x < float(p[guess]):  # accept with probability min(1, p(x) / q(x))
                    new.append(guess)
                    chosen.append(float(logp[guess]))
                    continue
                # rejected: the residual distribution norm(max(0, p - q)) (q a point mass for certain guesses)
                q = torch.zeros_like(p).index_fill_(0, torch.tensor([guess], device=p.device), 1.0) \
                    if dists[i] is None else dists[i]
                residual = (p - q).clamp(min=0)
                p = residual / residual.sum() if float(residual.sum()) > 0 else p
            token = int(torch.multinomial(p, 1, generator=self.generator))
            new.append(token)
            chosen.append(float(logp[token]))
            return i, new, chosen
        return len(guesses), new, chosen
