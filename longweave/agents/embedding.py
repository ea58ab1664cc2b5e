"""What the strategies that embed share: an `embedder` setting, or an embedder object."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, PrivateAttr

if TYPE_CHECKING:
    from typing_extensions import Self

    from longweave.agents.base import RunContext
    from longweave.retrieval.embeddings import Embedder


class UsesEmbedder(BaseModel):
    """A strategy base: subclasses declare `embedder: str`; models load once per cache folder."""

    _embedder: Embedder | None = PrivateAttr(default=None)
    _loaded: dict[str, Embedder] = PrivateAttr(default_factory=dict)

    def with_embedder(self, embedder: Embedder) -> Self:
        """A copy that embeds with this object (a fake in tests, a shared model in a server)."""
        copy = self.model_copy(update={"embedder": embedder.name})
        copy._embedder = embedder
        return copy

    def get_embedder(self, ctx: RunContext) -> Embedder:
        """The embedder for this run; vectors are cached by text hash beside the artifacts."""
        if self._embedder is not None:
            return self._embedder
        from longweave.retrieval.index import resolve_embedder

        cache_dir = ctx.artifacts.root.parent if ctx.artifacts is not None else None
        key = f"{self.embedder}|{cache_dir}"  # type: ignore[attr-defined]
        if key not in self._loaded:
            self._loaded[key] = resolve_embedder(self.embedder, cache_dir)  # type: ignore[attr-defined]
        return self._loaded[key]
