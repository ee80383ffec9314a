"""The web app `asl-sweep ui` serves (`mlflow server --app-name asl-sweep`, registered under
MLflow's `mlflow.app` entry points): MLflow's own app, changed in one place. The page it
serves sets MLflow's workflow view to "Model training" in a browser that has not chosen one
yet: MLflow keeps that choice in the browser (localStorage, default "GenAI"), so a run,
compare or model-version page opened from a link, or reached by a click that drops the
address's `workflowType`, showed the GenAI sidebar (traces, judges, prompts) for a study's
training runs. A choice the user made in the UI stands; nothing else is changed."""

from __future__ import annotations

from mlflow.server.fastapi_app import app as mlflow_app

KEY = "mlflow.workflowType_v1"  # MLflow's useLocalStorage key: `${key}_v${version}`
CHOICE = (f'<script>try{{if(localStorage.getItem("{KEY}")===null)localStorage.setItem('
          f'"{KEY}",JSON.stringify("machine_learning"))}}catch(e){{}}</script>').encode()
PAGES = ("/", "/index.html")


class ModelTrainingFirst:
    """An ASGI app: MLflow's, with CHOICE at the top of the served page. (A class, not a
    function: MLflow takes a plain function for a factory.)"""

    def __init__(self, inner):
        self.inner = inner

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("path") not in PAGES:
            await self.inner(scope, receive, send)
            return
        start: dict = {}
        body: list[bytes] = []

        async def rewrite(message):
            if message["type"] == "http.response.start":
                start.update(message)
                return
            if message["type"] != "http.response.body":
                await send(message)
                return
            body.append(message.get("body", b""))
            if message.get("more_body"):
                return
            page = b"".join(body)
            headers = list(start.get("headers", []))
            html = any(k.lower() == b"content-type" and b"text/html" in v for k, v in headers)
            if html and b"<head>" in page:
                page = page.replace(b"<head>", b"<head>" + CHOICE, 1)
                headers = [(k, str(len(page)).encode() if k.lower() == b"content-length" else v)
                           for k, v in headers]
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": page})

        await self.inner(scope, receive, rewrite)


app = ModelTrainingFirst(mlflow_app)
