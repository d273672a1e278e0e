"""Streaming chat replies from any OpenAI-compatible endpoint (OpenAI, DeepSeek, Ollama, llama.cpp, vLLM).

`LlmClient.stream(messages)` yields the reply's text as it arrives. Failures become `LlmError` with a
message a user can act on:

- before the first token: connect errors, 429 and 5xx are retried with backoff by the `openai` client
  itself (`[llm] retries`; it honours the server's Retry-After); the whole wait for the first token is
  bounded by `[llm] first_token_timeout_s`.
- after it: a broken stream raises `LlmStreamBroken`, so the caller keeps what was already said and ends
  the turn; nothing is retried (the listener has heard the start already).

Cancelling the consuming task (barge-in) closes the HTTP response at once, so the server stops too.
Reasoning deltas (`reasoning_content`, sent by DeepSeek-style servers) are never yielded, but they
count as a sign of life for the first-token timeout.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import openai

from agent.config import LlmConfig
from agent.errors import KoeError

log = logging.getLogger(__name__)

OPENAI_API = "https://api.openai.com/v1"


class LlmError(KoeError):
    """The LLM gave no usable reply; the message says why and what to check."""


class LlmStreamBroken(LlmError):
    """The reply stopped in the middle: what was already yielded stands, the rest is lost."""


class LlmClient:
    """One `openai.AsyncOpenAI` client configured from `[llm]`, reused for every turn."""

    def __init__(self, config: LlmConfig) -> None:
        self.config = config
        self.base_url = config.resolved_base_url() or OPENAI_API
        api_key = config.resolved_api_key()
        if api_key is None and self.base_url == OPENAI_API:
            raise KoeError(
                f"no API key for the OpenAI API: set ${config.api_key_env} (or [llm] api_key), "
                "or point [llm] base_url at another OpenAI-compatible server"
            )
        self._client = openai.AsyncOpenAI(
            base_url=self.base_url,
            api_key=api_key or "unused",  # local servers ignore the key, the client insists on one
            timeout=config.timeout_s,
            max_retries=config.retries,
        )
        self._completions = self._client.chat.completions  # import the lazy resource now, not in turn one

    async def stream(self, messages: list[dict]) -> AsyncIterator[str]:
        """Yield the reply's text pieces; raise `LlmError` (or `LlmStreamBroken` mid-answer)."""
        config = self.config
        said = 0  # characters yielded so far
        response = None
        try:
            async with asyncio.timeout(config.first_token_timeout_s):
                response = await self._completions.create(
                    model=config.model,
                    messages=messages,
                    stream=True,
                    temperature=config.temperature,
                    max_tokens=config.max_tokens,
                    extra_body=config.extra_body or None,
                )
                chunks = aiter(response)
                first = await self._first_text(chunks)
            if first:
                said += len(first)
                yield first
            async for chunk in chunks:
                text = _content(chunk)
                if text:
                    said += len(text)
                    yield text
        except TimeoutError:
            raise LlmError(
                f"the LLM at {self.base_url} sent no reply within {config.first_token_timeout_s:g} s "
                "([llm] first_token_timeout_s); is the model loaded and the server not overloaded?"
            ) from None
        except openai.APIError as exc:
            if said:
                reason = (
                    f"connection lost: {exc.__cause__ or exc}"
                    if type(exc) is openai.APIConnectionError
                    else describe_error(exc)
                )
                raise LlmStreamBroken(f"the LLM reply broke off after {said} characters ({reason})") from None
            raise LlmError(describe_error(exc, self.base_url, config.model)) from None
        finally:
            if response is not None:
                await response.close()

    async def _first_text(self, chunks: AsyncIterator) -> str:
        """Wait for the first chunk with content or reasoning; return its content ("" if reasoning)."""
        async for chunk in chunks:
            text = _content(chunk)
            if text or _reasoning(chunk):
                return text
        return ""

    async def list_models(self) -> list[str]:
        """The model names the endpoint offers (`GET /models`), for `koe doctor` and error messages."""
        try:
            return [model.id async for model in self._client.models.list()]
        except openai.APIError as exc:
            raise LlmError(describe_error(exc, self.base_url, self.config.model)) from None

    async def close(self) -> None:
        await self._client.close()

    async def __aenter__(self) -> LlmClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


def _content(chunk) -> str:
    if not chunk.choices:
        return ""
    return chunk.choices[0].delta.content or ""


def _reasoning(chunk) -> str:
    if not chunk.choices:
        return ""
    delta = chunk.choices[0].delta
    return getattr(delta, "reasoning_content", None) or getattr(delta, "reasoning", None) or ""


def describe_error(exc: openai.APIError, base_url: str | None = None, model: str | None = None) -> str:
    """One line for the user: what failed and what to check."""
    where = f" at {base_url}" if base_url else ""
    if isinstance(exc, openai.APITimeoutError):
        return f"the LLM{where} timed out ([llm] timeout_s)"
    if isinstance(exc, openai.APIConnectionError):
        return f"cannot reach the LLM{where}: {exc.__cause__ or exc} (is the server running? check [llm] base_url)"
    if isinstance(exc, openai.AuthenticationError):
        return f"the LLM{where} rejected the API key (HTTP 401); check [llm] api_key_env / api_key"
    if isinstance(exc, openai.NotFoundError):
        return f"the LLM{where} does not know model {model!r} (HTTP 404); check [llm] model"
    if isinstance(exc, openai.RateLimitError):
        return f"the LLM{where} is rate limiting (HTTP 429) and retries ran out ([llm] retries)"
    if isinstance(exc, openai.APIStatusError):
        detail = _error_message(exc)
        if exc.status_code >= 500:
            return f"the LLM{where} failed with HTTP {exc.status_code} and retries ran out: {detail}"
        return f"the LLM{where} refused the request with HTTP {exc.status_code}: {detail}"
    return f"the LLM{where} sent an error: {exc.message}"


def _error_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
    return exc.message
