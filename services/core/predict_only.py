"""PredictionService's other methods, for servers that answer Predict only.

Monolith's servers (entry, PS, dense, unified) never implement Classify, Regress or MultiInference; a client that
calls them gets UNIMPLEMENTED with a message naming the server, instead of the generated servicer's bare
"Method not implemented!".
"""

from __future__ import annotations

from typing import ClassVar

import grpc


class PredictOnly:
    """Mixed in before the generated ``PredictionServiceServicer``; ``server_name`` says which server refuses."""

    server_name: ClassVar[str]

    async def _refuse(self, context: grpc.aio.ServicerContext, method: str) -> None:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method}: {self.server_name} serves Predict only")

    async def Classify(self, request: object, context: grpc.aio.ServicerContext) -> None:
        await self._refuse(context, "Classify")

    async def Regress(self, request: object, context: grpc.aio.ServicerContext) -> None:
        await self._refuse(context, "Regress")

    async def MultiInference(self, request: object, context: grpc.aio.ServicerContext) -> None:
        await self._refuse(context, "MultiInference")
