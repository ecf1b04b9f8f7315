"""The conversation engine: one user message in, one streamed reply out, with memory.

It knows nothing of Discord. An edge (the Discord cogs, the terminal console) converts its
events into :class:`~bot.models.Incoming` and hands over a :class:`ReplySink` that shows the
reply as it streams. For every turn the engine:

1. stores the user's message (status ``pending``) before anything can fail;
2. waits for the session's lock (one generation per session) and a generation slot;
3. loads the context from the session's stable start and trims it to the token budget;
4. streams the reply from vLLM, checkpointing the text every few seconds;
5. stores the outcome (``done``, or ``interrupted``/``failed``/``cancelled`` with the text
   that had arrived), and calibrates its token estimates from vLLM's reported usage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from bot.admission import Gate
from bot.config import Config
from bot.llm import ChatRequest, Completion, ContextTooLong, LLMClient, LLMError, ModelInfo
from bot.metrics import Metrics
from bot.models import ChatSettings, Incoming, ReplyRecord, Session, Status, Turn
from bot.prompt import build_messages, clean_name
from bot.store import Store
from bot.tokens import TokenCounter
from bot.trimming import Budget, MessageTooLong, Plan, message_cost, plan_context, user_cost

log = logging.getLogger(__name__)

CHECKPOINT_SECONDS = 2.0
# Cancelling a turn's task with this message marks it interrupted (the bot is stopping)
# rather than cancelled (the user withdrew the message).
SHUTDOWN = "shutdown"
# A calibration sample: prose and code, roughly what people send.
_CALIBRATION_TEXT = (
    "Hi! Could you explain how Python's asyncio event loop schedules coroutines, and why "
    "`await asyncio.sleep(0)` yields control? Here's my code:\n\n```python\nasync def main():\n"
    "    tasks = [asyncio.create_task(work(i)) for i in range(10)]\n"
    "    await asyncio.gather(*tasks)\n```\nThanks — it's for a Discord bot (v2.7, 2026)."
)


class ReplySink(Protocol):
    """Where a reply goes while it streams (a Discord message, the terminal)."""

    async def started(self, reply_id: int) -> None:
        """The reply row exists; the first text will follow."""

    def on_text(self, delta: str) -> None:
        """A piece of visible reply text arrived (called per streamed chunk: keep it cheap)."""

    async def finish(self, outcome: Outcome) -> None:
        """Show the final state: the whole text, and a notice if it is not a clean reply."""


@dataclass(frozen=True, slots=True)
class Outcome:
    status: Status
    text: str
    notice: str | None = None  # a short line for the user when the reply is not complete
    finish_reason: str | None = None
    reply_id: int | None = None
    user_message_id: int | None = None


NOTICES = {
    "unavailable": "The model server is unavailable right now. Please try again in a minute.",
    "timeout": "The model server stopped responding. Please try again.",
    "truncated": "The model server cut the reply short.",
    "bad_response": "The model server sent something I could not read.",
    "model_not_found": "The configured model is not available on the model server.",
    "context_too_long": "This conversation no longer fits the model's context. Try /reset.",
    "error": "Something went wrong while generating the reply.",
    "storage": "Storage error: this reply could not be saved, so I won't remember it.",
}


@dataclass(slots=True)
class _Context:
    """What a turn's request is built from; a harder trim rebuilds the request from it."""

    incoming: Incoming
    settings: ChatSettings
    info: ModelInfo
    turns: list[Turn]
    system: int  # token estimates, framing included
    costs: list[int]
    newest: int
    user_message_id: int
    session_id: int

    def start_id(self, plan: Plan) -> int:
        """The row id the session's context starts at after this plan."""
        if plan.start < len(self.turns):
            return self.turns[plan.start].user_id
        return self.user_message_id

    def request(self, plan: Plan) -> ChatRequest:
        settings, incoming = self.settings, self.incoming
        return ChatRequest(
            model=self.info.id,
            messages=build_messages(
                settings.system_prompt,
                self.turns[plan.start :],
                incoming.text,
                incoming.created_at,
                incoming.author_name,
                time_awareness=settings.time_awareness,
                shared=incoming.scope.user_id is None,
            ),
            max_tokens=settings.max_tokens,
            temperature=settings.temperature,
            top_p=settings.top_p,
        )


class Engine:
    def __init__(
        self,
        config: Config,
        store: Store,
        llm: LLMClient,
        counter: TokenCounter,
        metrics: Metrics | None = None,
    ) -> None:
        self._config = config
        self.store = store
        self.llm = llm
        self.counter = counter
        self.gate = Gate(config.limits.max_concurrency, config.limits.queue_size)
        self.model: ModelInfo | None = None
        self.ratio = 1.0  # served-model tokens per tiktoken token
        self._locks: dict[int, tuple[asyncio.Lock, int]] = {}
        self._model_lock = asyncio.Lock()
        self.turns_started = 0
        self.trims = 0
        self.metrics = metrics or Metrics()
        self.metrics.watch_queue(lambda: self.gate.running, lambda: self.gate.waiting)

    # -- model and calibration --------------------------------------------------------------

    async def ensure_model(self) -> ModelInfo:
        """Resolve the served model (and calibrate once) on first use; LLMError if down."""
        if self.model is not None:
            return self.model
        async with self._model_lock:
            if self.model is None:
                info = await self.llm.resolve_model()
                await self._calibrate(info)
                self.model = info
                log.info(
                    "model %s, max_model_len %s, ratio %.2f",
                    info.id,
                    info.max_model_len,
                    self.ratio,
                )
        return self.model

    async def _calibrate(self, info: ModelInfo) -> None:
        """Start from vLLM's own count of a sample prompt (/tokenize), when it has one."""
        messages = build_messages(
            self._config.chat.system_prompt,
            [],
            _CALIBRATION_TEXT,
            datetime(2026, 1, 1, tzinfo=UTC),
            None,
        )
        served = await self.llm.tokenize(info.id, messages)
        if served:
            estimate = (
                message_cost(self.counter.count(messages[0]["content"]))
                + message_cost(self.counter.count(messages[1]["content"]))
                + 4
            )
            self.ratio = max(0.5, min(4.0, served / estimate))

    def _learn(self, plan: Plan, completion: Completion) -> None:
        if not completion.prompt_tokens or plan.estimate <= 0:
            return
        observed = completion.prompt_tokens / plan.estimate
        # Up at once (an overflow costs a failed request), down slowly.
        self.ratio = observed if observed > self.ratio else 0.9 * self.ratio + 0.1 * observed

    # -- turns ------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _session_lock(self, session_id: int) -> AsyncIterator[None]:
        lock, users = self._locks.get(session_id, (asyncio.Lock(), 0))
        self._locks[session_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[session_id]
            if users == 1:
                del self._locks[session_id]
            else:
                self._locks[session_id] = (lock, users - 1)

    async def respond(
        self, incoming: Incoming, sink: ReplySink, settings: ChatSettings
    ) -> Outcome | None:
        """Answer one message. Returns None if this Discord message was already answered.

        Raises :class:`bot.admission.Busy` (nothing stored) when the queue is full.
        """
        async with self.gate.admit():
            session = await self.store.current_session(incoming.scope)
            tokens = self.counter.count(incoming.text)
            user_message_id = await self.store.add_user_message(session.id, incoming, tokens)
            if user_message_id is None:
                return None
            self.turns_started += 1
            async with self._session_lock(session.id):
                return await self._turn(incoming, sink, settings, session, user_message_id, tokens)

    async def _turn(
        self,
        incoming: Incoming,
        sink: ReplySink,
        settings: ChatSettings,
        session: Session,
        user_message_id: int,
        tokens: int,
    ) -> Outcome:
        # The context start may have moved while this turn waited for the lock.
        session = await self.store.current_session(incoming.scope)
        try:
            info = await self.ensure_model()
        except LLMError as exc:
            return await self._fail(sink, user_message_id, None, exc, "")
        shared = incoming.scope.user_id is None
        names = self.counter.count(clean_name(incoming.author_name or "")) if shared else 0
        turns = await self.store.load_context(session.id, session.context_start_id)
        context = _Context(
            incoming=incoming,
            settings=settings,
            info=info,
            turns=turns,
            system=message_cost(self.counter.count(settings.system_prompt)),
            costs=[user_cost(t.user_tokens, names) + message_cost(t.reply_tokens) for t in turns],
            newest=user_cost(tokens, names),
            user_message_id=user_message_id,
            session_id=session.id,
        )
        try:
            plan = self._plan(context, self._config.llm.low_watermark)
        except MessageTooLong as exc:
            notice = (
                f"Your message is too long for this model: about {exc.needed} tokens "
                f"where {exc.limit} fit. Please shorten it or split it up."
            )
            self.metrics.turns.labels(Status.FAILED).inc()
            self.metrics.refusals.labels("too_long_for_context").inc()
            record = ReplyRecord(Status.FAILED, "", 0, error="message too long")
            await self.store.finish_turn(user_message_id, None, record)
            outcome = Outcome(Status.FAILED, "", notice, user_message_id=user_message_id)
            await sink.finish(outcome)
            return outcome
        if plan.trimmed:
            self.trims += 1
            self.metrics.trims.inc()
            await self.store.set_context_start(session.id, context.start_id(plan))
        prompt_id = await self.store.system_prompt_id(settings.system_prompt)
        reply_id = await self.store.start_reply(
            session.id,
            user_message_id,
            model=info.id,
            system_prompt_id=prompt_id,
            temperature=settings.temperature,
            top_p=settings.top_p,
            max_tokens=settings.max_tokens,
        )
        await sink.started(reply_id)
        return await self._generate(context, plan, sink, reply_id)

    def _plan(self, context: _Context, watermark: float, *, force: bool = False) -> Plan:
        budget = Budget(
            max_model_len=context.info.max_model_len or self._config.llm.fallback_context,
            max_tokens=context.settings.max_tokens,
            margin=self._config.llm.context_margin,
            ratio=self.ratio,
        )
        return plan_context(
            context.system, context.costs, context.newest, budget, watermark, force=force
        )

    async def _generate(
        self, context: _Context, plan: Plan, sink: ReplySink, reply_id: int
    ) -> Outcome:
        pieces: list[str] = []

        def on_text(delta: str) -> None:
            pieces.append(delta)
            sink.on_text(delta)

        user_message_id = context.user_message_id
        checkpoints = asyncio.create_task(self._checkpoint(reply_id, pieces))
        started = time.monotonic()
        try:
            async with self.gate.slot():
                try:
                    completion = await self.llm.stream_chat(context.request(plan), on_text)
                except ContextTooLong as exc:
                    if pieces or exc.partial or not context.turns[plan.start :]:
                        raise  # nothing left to drop: a retry would fail the same way
                    # Our estimate was short: trust vLLM, trim much harder, try once more.
                    self.ratio *= 1.25
                    plan = self._plan(context, self._config.llm.low_watermark / 2, force=True)
                    self.trims += 1
                    self.metrics.trims.inc()
                    await self.store.set_context_start(context.session_id, context.start_id(plan))
                    completion = await self.llm.stream_chat(context.request(plan), on_text)
        except (LLMError, MessageTooLong) as exc:
            error = exc if isinstance(exc, LLMError) else ContextTooLong(str(exc))
            return await self._fail(
                sink,
                user_message_id,
                reply_id,
                error,
                "".join(pieces),
                latency=time.monotonic() - started,
            )
        except asyncio.CancelledError as exc:
            status = Status.INTERRUPTED if exc.args == (SHUTDOWN,) else Status.CANCELLED
            self.metrics.turns.labels(status).inc()
            text = "".join(pieces)
            record = ReplyRecord(status, text, self.counter.count(text), error=str(status))
            with contextlib.suppress(Exception):
                await self.store.finish_turn(user_message_id, reply_id, record)
                await sink.finish(
                    Outcome(
                        status,
                        text,
                        "The reply was interrupted.",
                        reply_id=reply_id,
                        user_message_id=user_message_id,
                    )
                )
            raise
        finally:
            checkpoints.cancel()
        self._learn(plan, completion)
        self._observe(completion)
        record = ReplyRecord(
            status=Status.DONE,
            text=completion.text,
            tokens=self.counter.count(completion.text),
            finish_reason=completion.finish_reason,
            prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens,
            cached_tokens=completion.cached_tokens,
            first_token_ms=_ms(completion.first_token_s),
            latency_ms=_ms(completion.duration_s),
            context_start_id=context.start_id(plan),
            context_turns=len(context.turns) - plan.start,
        )
        stored = await self._store_outcome(user_message_id, reply_id, record)
        if self._config.logging.log_content:  # an admin's explicit debug switch
            log.info("turn %d: %r -> %r", user_message_id, context.incoming.text, completion.text)
        notice = None
        if not stored:
            notice = NOTICES["storage"]
        elif completion.finish_reason == "length":
            notice = "The reply reached its length limit."
        elif not completion.text.strip():
            notice = "The model returned an empty reply."
        outcome = Outcome(
            Status.DONE,
            completion.text,
            notice,
            completion.finish_reason,
            reply_id,
            user_message_id,
        )
        await sink.finish(outcome)
        return outcome

    def _observe(self, completion: Completion) -> None:
        m = self.metrics
        m.turns.labels(Status.DONE).inc()
        m.reply_seconds.observe(completion.duration_s)
        if completion.first_token_s is not None:
            m.first_token_seconds.observe(completion.first_token_s)
        for kind, value in (
            ("prompt", completion.prompt_tokens),
            ("completion", completion.completion_tokens),
            ("cached", completion.cached_tokens),
        ):
            if value:
                m.tokens.labels(kind).inc(value)

    async def _checkpoint(self, reply_id: int, pieces: list[str]) -> None:
        saved = 0
        while True:
            await asyncio.sleep(CHECKPOINT_SECONDS)
            if len(pieces) != saved:
                try:
                    await self.store.checkpoint_reply(reply_id, "".join(pieces))
                except sqlite3.Error as exc:  # full disk: the reply streams on regardless
                    log.warning("turn checkpoint not saved: %s", type(exc).__name__)
                    continue
                saved = len(pieces)

    async def _store_outcome(
        self, user_message_id: int, reply_id: int | None, record: ReplyRecord
    ) -> bool:
        """Store a turn's outcome; False when the database refuses it (full disk, I/O error).

        The user has already seen the reply, so they get it with a note rather than an error
        in its place; the turn stays pending until the next start marks it interrupted.
        """
        try:
            await self.store.finish_turn(user_message_id, reply_id, record)
        except sqlite3.Error as exc:
            log.error("turn %s: outcome not stored: %s", user_message_id, type(exc).__name__)
            return False
        return True

    async def _fail(
        self,
        sink: ReplySink,
        user_message_id: int,
        reply_id: int | None,
        exc: LLMError,
        text: str,
        latency: float | None = None,
    ) -> Outcome:
        text = text or exc.partial
        status = Status.INTERRUPTED if text else Status.FAILED
        self.metrics.turns.labels(status).inc()
        self.metrics.errors.labels(exc.kind).inc()
        log.warning(
            "turn %s %s after %d attempt(s): %s", user_message_id, status, exc.attempts, exc.kind
        )
        record = ReplyRecord(
            status, text, self.counter.count(text), error=exc.kind, latency_ms=_ms(latency)
        )
        stored = await self._store_outcome(user_message_id, reply_id, record)
        if exc.kind == "model_not_found":
            self.model = None  # the admin may have changed the served model: look again
        notice = NOTICES.get(exc.kind, NOTICES["error"])
        outcome = Outcome(
            status,
            text,
            notice if stored else f"{notice} {NOTICES['storage']}",
            reply_id=reply_id,
            user_message_id=user_message_id,
        )
        await sink.finish(outcome)
        return outcome


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else round(seconds * 1000)
