"""The voice library over HTTP.

- `POST /v1/voices`: multipart form with `file` (a WAV, FLAC, Ogg or MP3 recording of 1-60 s) and `name` (the
  new voice's id: 1-64 characters of a-z, 0-9, '_' and '-'). 201 with the voice record.
- `GET /v1/voices`: `{"voices": [record, ...]}`, the built-in "default" voice first.
- `GET /v1/voices/{id}`: the record. `DELETE /v1/voices/{id}`: 204.

A record is `{"id", "name", "hash", "duration", "created", "builtin"}`. Errors are
`{"error": {"code", "message"}}` with the library's status (400 bad name, 404 unknown voice, 409 name taken,
413 too large, 415 undecodable, 422 silent/too short/unusable). Uploads larger than `max_upload_bytes` are
refused from their Content-Length before anything is read, and otherwise as soon as the bytes received pass
the limit, so no upload can make the server hold more than that (plus the form's small overhead).
"""

from __future__ import annotations

from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.errors import ClientError
from app.server.http_common import BodyTooLarge, check_declared_length, limited_receive

MULTIPART_OVERHEAD_BYTES = 64 * 1024  # boundaries, part headers and the name field around the file
PAYLOAD_TOO_LARGE = 413

# Failures are `ClientError`s (a `VoiceError` carries the library's status), answered by the app's handlers.


async def list_voices(request: Request) -> Response:
    return JSONResponse({"voices": [record.as_dict() for record in request.app.state.voices.list()]})


async def get_voice(request: Request) -> Response:
    record = request.app.state.voices.get(request.path_params["voice_id"])
    return JSONResponse(record.as_dict())


async def delete_voice(request: Request) -> Response:
    request.app.state.voices.delete(request.path_params["voice_id"])
    return Response(status_code=204)


async def create_voice(request: Request) -> Response:
    max_upload = request.app.state.settings.max_upload_bytes
    limit = max_upload + MULTIPART_OVERHEAD_BYTES
    try:
        check_declared_length(request, limit)
        bounded = Request(request.scope, receive=limited_receive(request.receive, limit))
        async with bounded.form(max_files=1, max_fields=1) as form:
            upload, name = form.get("file"), form.get("name")
            if not isinstance(upload, UploadFile):
                raise ClientError("bad_request", "send the recording as a multipart/form-data file field named "
                                                 "`file`")
            if not isinstance(name, str) or not name:
                raise ClientError("invalid_voice_name", "send the voice's name in the form field `name`")
            data = await upload.read(max_upload + 1)  # one byte more than allowed is enough to refuse it
            record = await request.app.state.voices.create(name, data, filename=upload.filename)
    except BodyTooLarge:
        raise ClientError("upload_too_large", f"the upload is larger than the {max_upload}-byte limit",
                          PAYLOAD_TOO_LARGE) from None
    except HTTPException as exc:  # a malformed multipart body
        raise ClientError("bad_request", f"malformed form: {exc.detail}", exc.status_code) from None
    return JSONResponse(record.as_dict(), status_code=201)


routes = [
    Route("/v1/voices", list_voices, methods=["GET"]),
    Route("/v1/voices", create_voice, methods=["POST"]),
    Route("/v1/voices/{voice_id}", get_voice, methods=["GET"]),
    Route("/v1/voices/{voice_id}", delete_voice, methods=["DELETE"]),
]
