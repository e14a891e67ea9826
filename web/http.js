// The pages' one way to call the gateway's JSON API with a bearer credential.

export class HttpError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

/** `method path` with `body` as JSON; the answer's JSON, or an HttpError with the API's message. */
export async function request(method, path, body, bearer) {
  const opts = { method, headers: { Authorization: 'Bearer ' + bearer } };
  if (body !== undefined) {
    opts.headers['Content-Type'] = 'application/json';
    opts.body = JSON.stringify(body);
  }
  const res = await fetch(path, opts);
  let data = null;
  try { data = await res.json(); } catch { /* empty body */ }
  if (!res.ok) {
    const err = data && data.error;
    const msg = (err && (err.message || err)) || ('HTTP ' + res.status);
    throw new HttpError(res.status, String(msg));
  }
  return data;
}
