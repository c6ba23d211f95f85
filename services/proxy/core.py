"""The proxy's transport-free core: admission, routing with one retry, fan-outs, metrics.

The gRPC servicer and the REST gateway both translate their protocol into :meth:`ProxyCore.call` with the
serialized TF Serving request and get serialized response bytes back; neither decodes tensors on the
gRPC path. Only Predicts are parsed, to merge concurrent ones into one upstream call
(``predict_coalesce``); every other request goes upstream as the client's bytes. Failures surface as
package errors (NotFoundError, UnavailableError, ...) or :class:`RpcStatusError` carrying an upstream
status to relay unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import grpc

from monolith_serving.core.admin_token import token_matches
from monolith_serving.core.errors import (
    DeadlineExceededError,
    InvalidArgumentError,
    MonolithServingError,
    UnavailableError,
)
from monolith_serving.core.grpc_errors import status_code_for
from monolith_serving.core.log_limit import RateLimitedLog
from monolith_serving.core.serving_call import (
    GET_MODEL_STATUS,
    MODEL_SERVICE,
    PREDICT,
    REQUEST_ID_KEY,
    CallContext,
    Metadata,
    RpcStatusError,
    UpstreamReply,
    method_name,
)
from monolith_serving.proto_gen.tensorflow_serving.apis import get_model_status_pb2
from monolith_serving.proxy.admission import Admission
from monolith_serving.proxy.endpoints import EndpointSource
from monolith_serving.proxy.metrics import UNKNOWN_MODEL, ModelLabels, ProxyMetrics
from monolith_serving.proxy.model_status import merge_model_status
from monolith_serving.proxy.predict_coalesce import PredictCoalescer, PredictCoalescing
from monolith_serving.proxy.router import ReplicaState, Router
from monolith_serving.proxy.upstream import UpstreamPool
from monolith_serving.proxy.wire import ModelNames

log = logging.getLogger(__name__)
# An upstream CANCELLED while our own client still waits is not the client's doing (that cancels this
# handler instead): the entry's handler was torn down under the call, like a broken connection. Predict is
# read-only, so it is retried on another replica like UNAVAILABLE.
_RETRIED_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED})
# The transport measures the client's time left a few microseconds before the core notes its start, so the
# core's deadline trails the client's by that much; a cancellation this close to it is the deadline passing.
_DEADLINE_SLACK_S = 0.001
# Answers that are the client's fault: its request, its model name, its token. They are logged at INFO, not
# WARNING, and are no upstream error (``proxy_upstream_errors_total``) when an entry gives them; the same set
# ``monolith:errors:ratio_rate5m`` (deploy/recording_rules.yml) leaves out, with the client's own cancellations.
CLIENT_FAULT_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
    }
)

# Methods sent to one replica chosen by the router (the entry answers UNIMPLEMENTED for what it lacks).
ROUTED_METHODS = ("Predict", "GetModelMetadata", "Classify", "Regress", "MultiInference")
RELOAD_CONFIG = f"/{MODEL_SERVICE}/HandleReloadConfigRequest"


@dataclass(frozen=True, kw_only=True)
class CoreConfig:
    max_in_flight: int = 1024
    admin_token: str | None = None
    fanout_timeout_s: float = 5.0  # GetModelStatus / reload fan-outs when the client set no deadline
    # Routed calls (Predict, GetModelMetadata, ...) when the client set no deadline: without one, a call to a
    # replica that accepts and never answers (SIGSTOPped, wedged) held its client and its admission slot
    # forever. None: no bound (the client's call may wait forever).
    default_timeout_s: float | None = 30.0
    min_retry_budget_s: float = 0.002  # no retry when less than this is left of the deadline
    # Share of the client's deadline the first attempt may use when another replica could take a retry. A replica
    # whose host vanished (no RST) would otherwise hold the request until the client's deadline.
    first_attempt_share: float = 0.5
    maintenance_interval_s: float = 0.5
    coalescing: PredictCoalescing = field(default_factory=PredictCoalescing)

    def __post_init__(self) -> None:
        if self.admin_token is not None and not self.admin_token:
            raise ValueError("admin_token must be non-empty when given")
        if self.default_timeout_s is not None and self.default_timeout_s <= 0:
            raise ValueError(f"default_timeout_s must be > 0 (or None), got {self.default_timeout_s}")


@dataclass(frozen=True)
class DeferredCount:
    """The ``proxy_requests_total`` count of a client request whose core call answered OK while its transport
    still has to turn that answer into its client's (the REST gateway writing a Predict's JSON), which can fail:
    :meth:`settle` counts it once, with the code the client got, under the labels the core call chose."""

    metrics: ProxyMetrics
    model_label: str  # as the core call labelled its model, after the entry answered OK for it
    method: str
    protocol: str

    def settle(self, code: grpc.StatusCode) -> None:
        """Counts the request; call it exactly once, when its client's answer is decided."""
        self.metrics.count_request(self.model_label, self.method, self.protocol, code.name)


class _MethodNames(dict[str, str]):
    """``path`` -> method name, computed once per path (a handful of them) instead of per request."""

    def __missing__(self, path: str) -> str:
        name = self[path] = method_name(path)
        return name


class ProxyCore:
    """Owns routing state; ``start()`` runs the probe/prune loop, ``stop()`` ends it. Idempotent both."""

    def __init__(
        self,
        *,
        source: EndpointSource,
        router: Router,
        pool: UpstreamPool,
        metrics: ProxyMetrics,
        config: CoreConfig,
        probe_timeout_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._source = source
        self._router = router
        self._pool = pool
        self._metrics = metrics
        self._config = config
        self._probe_timeout_s = probe_timeout_s
        self._clock = clock
        self.admission = Admission(config.max_in_flight)
        # Read at scrape time: no per-request gauge updates (each takes a lock).
        metrics.in_flight.set_function(lambda: self.admission.in_flight)
        self._methods = _MethodNames()
        self._model_names = ModelNames()
        self._model_labels = ModelLabels(source_lists_models=source.lists_models)
        self._client_failures = RateLimitedLog(log, logging.INFO, clock=clock)
        self._server_failures = RateLimitedLog(log, logging.WARNING, clock=clock)
        self._retries_log = RateLimitedLog(log, logging.INFO, clock=clock)
        self._maintenance: asyncio.Task[None] | None = None
        self._probes: set[asyncio.Task[None]] = set()
        self._drain_cut_off: float | None = None  # when the transports cancel what is still in flight (drain)
        self._predicts: PredictCoalescer | None = None
        if config.coalescing.enabled:
            self._predicts = PredictCoalescer(
                self._forward_predict, config.coalescing, on_merged=self._count_coalesced, clock=clock
            )

    # ---- lifecycle ---------------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._maintenance is None:
            self._maintenance = asyncio.create_task(self._maintenance_loop(), name="proxy-maintenance")

    def drain_started(self, grace_s: float) -> None:
        """Tells the core its transports stop accepting now and cancel the calls still in flight ``grace_s``
        from now (``--drain_timeout_s``). A call cancelled from then on is cut by the proxy's shutdown, not
        abandoned by its client: it is counted and logged (WARNING) as UNAVAILABLE, what gRPC answers its client
        (the server cancels its calls with UNAVAILABLE), not as the client's CANCELLED."""
        self._drain_cut_off = self._clock() + grace_s

    async def stop(self) -> None:
        tasks = [t for t in (self._maintenance, *self._probes) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._maintenance = None
        self._probes.clear()

    # ---- the one entry point of both transports ------------------------------------------------------------
    async def call(self, path: str, request: bytes, ctx: CallContext) -> UpstreamReply:
        """Serves one client call of ``path`` (``/package.Service/Method``) with serialized ``request``.

        Every call is counted and timed once, whatever ends it: an answer, an error, or the transport
        cancelling it (client gone or deadline passed, counted CANCELLED / DEADLINE_EXCEEDED; the drain's end,
        counted UNAVAILABLE; then re-raised); an ``internal`` call is neither. Failures are logged rate-limited
        (:meth:`_log_failure`). A routed call whose client set no deadline goes upstream with
        ``default_timeout_s``.
        """
        reply, _model_label = await self._call(path, request, ctx, count_answer=True)
        return reply

    async def call_deferring_count(
        self, path: str, request: bytes, ctx: CallContext
    ) -> tuple[UpstreamReply, DeferredCount]:
        """:meth:`call` for a transport that still has work that can fail between an OK answer and its client
        (the REST gateway writing JSON): a failure is counted here as by :meth:`call`, but an OK answer is not;
        the transport settles the returned :class:`DeferredCount` with the code its client gets. Timed as by
        :meth:`call`, up to the answer. Not for an ``internal`` call, which nobody counts."""
        if ctx.internal:
            raise ValueError("an internal core call is not counted: there is no count to defer")
        reply, model_label = await self._call(path, request, ctx, count_answer=False)
        return reply, DeferredCount(self._metrics, model_label, self._methods[path], ctx.protocol)

    async def _call(
        self, path: str, request: bytes, ctx: CallContext, *, count_answer: bool
    ) -> tuple[UpstreamReply, str]:
        """:meth:`call`, returning the reply with the model label its count has; an OK answer is counted only
        when ``count_answer``."""
        method = self._methods[path]
        started = self._clock()
        deadline = None if ctx.timeout_s is None else started + ctx.timeout_s  # the client's own
        model_label = UNKNOWN_MODEL
        code = grpc.StatusCode.OK
        count_here = True  # False only for an OK answer whose count the transport settles (``count_answer``)
        if not ctx.admitted:
            try:
                self._enter()
            except MonolithServingError as error:
                code = status_code_for(error)
                if not ctx.internal:
                    self._metrics.count_request(model_label, method, ctx.protocol, code.name)
                raise
        try:
            if path == RELOAD_CONFIG:
                reply = await self._reload_config(request, ctx)
                count_here = count_answer
                return reply, model_label
            model = self._model_names(request, multi_inference=method == "MultiInference")
            if not model:
                raise InvalidArgumentError("model_spec.name is required")
            addresses = self._source.endpoints(model)
            model_label = self._model_labels.of(model)
            if not addresses:
                raise UnavailableError(f"model {model!r} has no AVAILABLE replica right now")
            reply = await self._serve_model(path, model, addresses, request, ctx, deadline)
            model_label = self._model_labels.answered(model)
            count_here = count_answer
            return reply, model_label
        except RpcStatusError as error:
            code = error.code
            self._log_failure(ctx, method, model_label, code, error.message, self._client_caused(code, deadline))
            raise
        except MonolithServingError as error:
            code = status_code_for(error)
            self._log_failure(ctx, method, model_label, code, error.message, self._client_caused(code, deadline))
            raise
        except asyncio.CancelledError:
            code = self._cancellation_code(deadline)
            if code is grpc.StatusCode.UNAVAILABLE:
                message = "cancelled at shutdown: the proxy's drain timeout passed while it was in flight"
                self._log_failure(ctx, method, model_label, code, message, False)
                raise
            gone = "its deadline passed" if code is grpc.StatusCode.DEADLINE_EXCEEDED else "it cancelled the call"
            self._log_failure(ctx, method, model_label, code, f"the client stopped waiting: {gone}", True)
            raise
        except Exception:
            code = grpc.StatusCode.INTERNAL
            raise
        finally:
            if not ctx.admitted:
                self.admission.leave()
            if not ctx.internal:
                if count_here:
                    self._metrics.count_request(model_label, method, ctx.protocol, code.name)
                self._metrics.observe_latency(method, ctx.protocol, self._clock() - started)

    @contextlib.contextmanager
    def admitted(self) -> Iterator[None]:
        """Holds one admission slot for a client request its transport serves in several steps, from before
        any of its work (a REST Predict: reading and decoding the body, the signature lookup, the Predict) until
        the transport answers it. Core calls made for it meanwhile pass ``CallContext(admitted=True)`` and take
        no slot of their own, so the request counts once against ``max_in_flight`` and the drain waits for it.

        Refuses as :meth:`call` does (ResourceExhaustedError when full, UnavailableError when draining) and
        counts the refusal in ``proxy_rejected_requests_total``; the transport counts the request itself
        (:meth:`count_refused`), as no core call saw it.
        """
        self._enter()
        try:
            yield
        finally:
            self.admission.leave()

    def count_rejected(self, reason: str) -> None:
        """Counts a request its transport refused for a bound of its own (``reason`` from a fixed set: the REST
        gateway's ``body_bytes``) in ``proxy_rejected_requests_total``."""
        self._metrics.rejected.labels(reason=reason).inc()

    def _enter(self) -> None:
        try:
            self.admission.enter()
        except MonolithServingError:
            self.count_rejected("draining" if self.admission.draining else "in_flight")
            raise

    def count_refused(self, *, model: str | None, method: str, protocol: str, code: grpc.StatusCode) -> None:
        """Counts a client request its transport answered without a :meth:`call` of its own (a malformed REST
        path or body, a body over the limit), so ``proxy_requests_total`` sees every request.

        ``model`` is the name the request carried, if any: it becomes a label only when the source knows it
        and :class:`ModelLabels` would label it so; else ``unknown``. ``method`` must come from a fixed set.
        """
        self._metrics.count_request(self._unchecked_model_label(model), method, protocol, code.name)

    def _unchecked_model_label(self, model: str | None) -> str:
        """The label of a name no core call has looked up: :meth:`ModelLabels.of` takes a listing source's
        names as they are, trusting the lookup to have refused the others, so look it up here."""
        if not model:
            return UNKNOWN_MODEL
        try:
            self._source.endpoints(model)
        except MonolithServingError:  # NotFoundError, or the discovery view not loaded yet
            return UNKNOWN_MODEL
        return self._model_labels.of(model)

    async def _serve_model(
        self,
        path: str,
        model: str,
        addresses: tuple[str, ...],
        request: bytes,
        ctx: CallContext,
        deadline: float | None,
    ) -> UpstreamReply:
        if ctx.timeout_s is not None and ctx.timeout_s <= 0:
            # Nothing upstream could answer in time; an attempt would only count against a healthy replica.
            raise DeadlineExceededError(f"model {model!r}: the deadline passed before the request was forwarded")
        if path == GET_MODEL_STATUS:
            return await self._model_status(model, addresses, request, ctx)
        default_s = self._config.default_timeout_s
        if deadline is not None or default_s is None:
            return await self._forward(path, model, addresses, request, ctx.request_id, deadline)
        try:
            return await self._forward(path, model, addresses, request, ctx.request_id, self._clock() + default_s)
        except RpcStatusError as error:
            if error.code is not grpc.StatusCode.DEADLINE_EXCEEDED:
                raise
            raise RpcStatusError(
                error.code,
                f"model {model!r}: no answer within {default_s:g} s, the proxy's deadline for calls that set none "
                f"(--grpc_default_timeout_in_ms): {error.message}",
                error.trailing,
            ) from None

    async def _forward(
        self, path: str, model: str, addresses: tuple[str, ...], request: bytes, request_id: str, deadline: float | None
    ) -> UpstreamReply:
        if path == PREDICT and self._predicts is not None:
            return await self._predicts.forward(model, addresses, request, request_id, deadline)
        return await self._routed(path, model, addresses, request, request_id, deadline)

    def _cancellation_code(self, deadline: float | None) -> grpc.StatusCode:
        """What the transport cancelling our handler means: the client's deadline passed, the drain ended
        (:meth:`drain_started`), or the client went away."""
        now = self._clock()
        if deadline is not None and now >= deadline - _DEADLINE_SLACK_S:
            return grpc.StatusCode.DEADLINE_EXCEEDED
        if self._drain_cut_off is not None and now >= self._drain_cut_off - _DEADLINE_SLACK_S:
            return grpc.StatusCode.UNAVAILABLE
        return grpc.StatusCode.CANCELLED

    def _client_caused(self, code: grpc.StatusCode, deadline: float | None) -> bool:
        """Whether a failure with ``code`` is the client's doing: a code of :data:`CLIENT_FAULT_CODES`, or
        DEADLINE_EXCEEDED once the client's own deadline has passed (a short deadline is the client's choice)."""
        if code in CLIENT_FAULT_CODES:
            return True
        return code is grpc.StatusCode.DEADLINE_EXCEEDED and self._cancellation_code(deadline) is code

    def _log_failure(
        self, ctx: CallContext, method: str, model_label: str, code: grpc.StatusCode, message: str, client: bool
    ) -> None:
        """One line per (method, model label, code) per 10 s, with the request id of the occurrence logged and a
        count of those left out (``proxy_requests_total`` counts them all): INFO when the ``client`` caused it,
        WARNING when the proxy or an upstream did."""
        failures = self._client_failures if client else self._server_failures
        failures.log(
            (method, model_label, code),
            "request %s %s model=%s: %s %s",
            ctx.request_id,
            method,
            model_label,
            code.name,
            message,
        )

    def _count_coalesced(self, model: str, requests: int) -> None:
        self._metrics.count_coalesced(self._model_labels.of(model), requests)

    # ---- routed methods: one replica, one retry on another ----------------------------------------------------
    async def _forward_predict(
        self, model: str, addresses: tuple[str, ...], request: bytes, request_id: str, deadline: float | None
    ) -> UpstreamReply:
        return await self._routed(PREDICT, model, addresses, request, request_id, deadline)

    async def _routed(
        self,
        path: str,
        model: str,
        addresses: tuple[str, ...],
        request: bytes,
        request_id: str,
        deadline: float | None,
    ) -> UpstreamReply:
        metadata: Metadata = ((REQUEST_ID_KEY, request_id),)
        first = self._router.pick(addresses)
        if first is None:  # endpoints() never returns an empty tuple here; kept for type narrowing
            raise UnavailableError(f"no AVAILABLE replica of model {model!r}")
        first_deadline = deadline
        if deadline is not None and len(addresses) > 1:
            first_deadline = self._clock() + (deadline - self._clock()) * self._config.first_attempt_share
        try:
            return await self._attempt(first, path, request, first_deadline, metadata)
        except RpcStatusError as error:
            cut_short = error.code is grpc.StatusCode.DEADLINE_EXCEEDED and first_deadline != deadline
            if error.code not in _RETRIED_CODES and not cut_short:
                raise
            if cut_short:
                # A replica that cannot answer within half the deadline counts as failing, like a refused one.
                self._count_transport_failure(first, "no answer within its share of the deadline")
            second = self._router.pick(addresses, exclude=first.address)
            remaining = None if deadline is None else deadline - self._clock()
            if second is None or (remaining is not None and remaining < self._config.min_retry_budget_s):
                raise self._unavailable(model, first.address, error) from None
            self._metrics.retries.labels(self._methods[path]).inc()
            # Once per failing replica every 10 s: while a replica is down, every request retries.
            self._retries_log.log(
                first.address,
                "request %s: retrying on %s after %s: %s",
                request_id,
                second.address,
                first.address,
                error.message,
            )
        try:
            return await self._attempt(second, path, request, deadline, metadata)
        except RpcStatusError as error:
            if error.code is grpc.StatusCode.UNAVAILABLE:
                raise self._unavailable(model, second.address, error) from None
            raise

    def _count_transport_failure(self, state: ReplicaState, last_error: str) -> None:
        """Tells outlier detection ``state`` failed; the failure that ejects it is counted and logged."""
        if not self._router.on_failure(state):
            return
        self._metrics.ejections.inc()
        self._metrics.ejected.set(self._router.ejected_count())
        log.warning(
            "ejected entry replica %s after %d consecutive failures (last: %s)",
            state.address,
            state.consecutive_failures,
            last_error,
        )

    @staticmethod
    def _unavailable(model: str, address: str, error: RpcStatusError) -> RpcStatusError:
        return RpcStatusError(
            grpc.StatusCode.UNAVAILABLE, f"model {model!r}: entry replica {address}: {error.message}", error.trailing
        )

    async def _attempt(
        self, state: ReplicaState, path: str, request: bytes, deadline: float | None, metadata: Metadata
    ) -> UpstreamReply:
        timeout_s = None if deadline is None else max(deadline - self._clock(), 0.0)
        state.outstanding += 1
        started = self._clock()
        try:
            reply = await self._pool.call(state.address, path, request, timeout_s=timeout_s, metadata=metadata)
        except RpcStatusError as error:
            if error.code not in CLIENT_FAULT_CODES:  # the entry answering the client's mistake is no error of it
                self._metrics.upstream_errors.labels(error.code.name).inc()
            if error.code is grpc.StatusCode.UNAVAILABLE:
                self._count_transport_failure(state, error.message)
            raise
        finally:
            state.outstanding -= 1
            self._metrics.observe_upstream(self._methods[path], self._clock() - started)
        self._router.on_success(state)
        return reply

    # ---- fan-outs ----------------------------------------------------------------------------------------
    async def _fan_out(
        self, path: str, addresses: tuple[str, ...], request: bytes, ctx: CallContext
    ) -> list[tuple[str, UpstreamReply | RpcStatusError]]:
        timeout_s = ctx.timeout_s if ctx.timeout_s is not None else self._config.fanout_timeout_s
        metadata: Metadata = ((REQUEST_ID_KEY, ctx.request_id),)

        async def one(address: str) -> UpstreamReply | RpcStatusError:
            # Counted in the router's outstanding like a routed attempt, so every channel the pool opens has
            # router state: maintenance_step closes it once its address leaves discovery (forget_except), yet
            # never while a fan-out to it is in flight. Outlier detection is left to routed attempts.
            state = self._router.state(address)
            state.outstanding += 1
            try:
                return await self._pool.call(address, path, request, timeout_s=timeout_s, metadata=metadata)
            except RpcStatusError as error:
                return error
            finally:
                state.outstanding -= 1

        results: list[UpstreamReply | RpcStatusError] = await asyncio.gather(*(one(a) for a in addresses))
        return list(zip(addresses, results, strict=True))

    async def _model_status(
        self, model: str, addresses: tuple[str, ...], request: bytes, ctx: CallContext
    ) -> UpstreamReply:
        results = await self._fan_out(GET_MODEL_STATUS, addresses, request, ctx)
        replies = [r for _, r in results if isinstance(r, UpstreamReply)]
        if not replies:
            first_error = next(r for _, r in results if isinstance(r, RpcStatusError))
            if first_error.code is grpc.StatusCode.UNAVAILABLE:
                raise self._unavailable(model, results[0][0], first_error)
            raise first_error
        merged = merge_model_status(get_model_status_pb2.GetModelStatusResponse.FromString(r.response) for r in replies)
        return UpstreamReply(response=merged.SerializeToString(), trailing=())

    async def _reload_config(self, request: bytes, ctx: CallContext) -> UpstreamReply:
        expected = self._config.admin_token
        if expected is None:
            raise RpcStatusError(
                grpc.StatusCode.PERMISSION_DENIED,
                "HandleReloadConfigRequest is disabled on this proxy (start it with --admin_token to allow it)",
            )
        if not token_matches(ctx.admin_token, expected):
            raise RpcStatusError(
                grpc.StatusCode.PERMISSION_DENIED,
                "HandleReloadConfigRequest needs the admin token (metadata 'authorization: Bearer <token>' "
                "or 'x-admin-token')",
            )
        addresses = self._source.all_addresses()
        if not addresses:
            raise UnavailableError("no AVAILABLE entry replica to reload")
        results = await self._fan_out(RELOAD_CONFIG, addresses, request, ctx)
        failures = [(a, r) for a, r in results if isinstance(r, RpcStatusError)]
        if failures:
            detail = "; ".join(f"{a}: {e.code.name} {e.message}" for a, e in failures)
            raise RpcStatusError(
                failures[0][1].code, f"reload failed on {len(failures)} of {len(addresses)} replicas: {detail}"
            )
        first = results[0][1]
        assert isinstance(first, UpstreamReply)
        return first

    # ---- probe and prune loop ------------------------------------------------------------------------------
    async def _maintenance_loop(self) -> None:
        while True:
            await asyncio.sleep(self._config.maintenance_interval_s)
            started = self._clock()
            try:
                await self.maintenance_step()
            except asyncio.CancelledError:
                raise
            except Exception:
                # One bad step (a discovery hiccup) must never end the loop.
                log.exception("proxy maintenance step failed")
            self._metrics.maintenance_seconds.observe(self._clock() - started)

    async def maintenance_step(self) -> None:
        """Starts probes of ejected replicas whose cool-down passed; closes channels of departed replicas."""
        for state in self._router.due_for_probe():
            task = asyncio.create_task(self._probe(state), name=f"probe {state.address}")
            self._probes.add(task)
            task.add_done_callback(self._probes.discard)
        dropped = self._router.forget_except(set(self._source.all_addresses()))
        if dropped:
            await self._pool.close_addresses(dropped)
        self._metrics.ejected.set(self._router.ejected_count())

    async def _probe(self, state: ReplicaState) -> None:
        healthy = False
        try:
            healthy = await self._pool.probe(state.address, self._probe_timeout_s)
        finally:
            self._router.on_probe(state, healthy)
        if healthy:
            self._metrics.readmissions.inc()
            log.info("readmitted entry replica %s after a successful probe", state.address)
        self._metrics.ejected.set(self._router.ejected_count())
