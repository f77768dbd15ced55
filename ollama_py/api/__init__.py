"""The wire format: one msgspec Struct per request and response, native (`/api/*`) and OpenAI (`/v1/*`).

Nothing here knows about aiohttp. Handlers decode bodies with `codec.decode`,
which turns every malformed body into one `BadRequest` naming the field.
"""
