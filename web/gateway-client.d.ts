// Types of gateway-client.js and of the wire messages it handles (docs/PROTOCOL.md). The wire
// types follow proto-json/schema/*.schema.json; tests/gateway/client_library.rs checks that
// every field here is in the schema, with the same optionality, and the other way round.

export type Role = 'system' | 'user' | 'assistant' | 'tool';
export type ChunkKind = 'reasoning' | 'text' | 'tool_call';
export type FinishReason = 'stop' | 'length' | 'tool_calls' | 'content_filter' | 'cancelled' | 'error';

/** Text, or an image by URL (`data:` URLs carry base64). */
export type ContentPart =
  | { type: 'text'; text: string }
  | { type: 'image_url'; image_url: { url: string; detail?: string | null } };

/** A tool call an assistant message made earlier. */
export interface ToolCallSpec {
  id: string;
  type?: 'function';
  function: { name: string; arguments: string };
}

export interface ToolSpec {
  type?: 'function';
  function: { name: string; description?: string | null; parameters?: unknown; strict?: boolean | null };
}

export interface ChatMessage {
  role: Role;
  content?: string | ContentPart[] | null;
  tool_calls?: ToolCallSpec[];
  tool_call_id?: string | null;
}

/** The payload of a `chat` request (docs/PROTOCOL.md lists every field). */
export interface ChatPayload {
  content?: string;
  model?: string | null;
  system?: string | null;
  messages?: ChatMessage[];
  temperature?: number | null;
  max_tokens?: number | null;
  conversation_id?: string | null;
  tools?: ToolSpec[];
  tool_choice?: 'none' | 'auto' | 'required' | { type: 'function'; function: { name: string } } | null;
  parallel_tool_calls?: boolean | null;
  response_format?: { type: 'text' | 'json_object' | 'json_schema'; json_schema?: unknown } | null;
  top_p?: number | null;
  seed?: number | null;
  stop?: string[] | null;
  presence_penalty?: number | null;
  frequency_penalty?: number | null;
  reasoning_effort?: string | null;
  user?: string | null;
}

/** The payload of `auth`, the first message of a connection opened without a token. */
export interface AuthPayload {
  token: string;
}

/** The payload of a `resume` request. */
export interface ResumePayload {
  stream_id: string;
  after_seq?: number | null;
}

/** Which tool call a `tool_call` chunk continues; its first chunk has `id` and `name`. */
export interface ToolCallPiece {
  index: number;
  id?: string | null;
  name?: string | null;
}

/** The payload of a `chat` frame: one piece of an answer. */
export interface ChunkPayload {
  content: string;
  type: ChunkKind;
  model: string;
  seq: number;
  stream_id?: string | null;
  tool_call?: ToolCallPiece | null;
}

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  /** The gateway counted the tokens itself (the upstream reported none). */
  estimated?: boolean;
}

/** The payload of a `done` frame. */
export interface DonePayload {
  finish_reason: FinishReason;
  model: string;
  usage: Usage;
  chunks: number;
  conversation_id?: string | null;
  stream_id?: string | null;
}

/** The payload of an `error` frame. */
export interface ErrorPayload {
  code: number;
  reason: string;
  message: string;
}

export interface SessionLimits {
  max_frame_bytes: number;
  max_concurrent_requests: number;
  heartbeat_interval_ms: number;
  idle_timeout_ms: number;
}

/** The payload of a `system` frame. */
export interface SystemPayload {
  event: 'welcome' | 'draining';
  session_id: string;
  node_id: string;
  protocol_version: number;
  limits: SessionLimits;
}

export type ConnectionState = 'idle' | 'connecting' | 'open' | 'reconnecting' | 'draining' | 'closed';

export interface StatusDetail {
  code?: number;
  reason?: string;
  delayMs?: number;
  attempt?: number;
}

export interface ClientOptions {
  /** ws:// or wss:// address of /chat. */
  url: string;
  /**
   * A session token or API key, or a function that gets a fresh one for each connection. It is
   * sent in the first message (`auth`), never in the URL.
   */
  token: string | (() => string | Promise<string>);
  /** First reconnect delay (default 250 ms). */
  minDelayMs?: number;
  /** Longest reconnect delay (default 10 s). */
  maxDelayMs?: number;
  /** The WebSocket class; the global one by default. */
  WebSocket?: typeof WebSocket;
}

export interface Chunk {
  type: ChunkKind;
  content: string;
  seq: number;
  model: string;
  tool_call?: ToolCallPiece | null;
}

export interface AnswerHandlers {
  /** The request id; one is made up when absent. */
  id?: string;
  onChunk?: (chunk: Chunk) => void;
  onError?: (error: ErrorPayload) => void;
}

export interface Answer {
  readonly id: string;
  /** Known once the first chunk came. */
  readonly streamId: string | null;
  /** The last `seq` received, -1 before any. */
  readonly lastSeq: number;
  /** Resolves with the `done` payload; rejects with a GatewayError. */
  readonly done: Promise<DonePayload>;
  cancel(): void;
}

export class GatewayError extends Error {
  readonly code?: number;
  readonly reason?: string;
}

export function backoffDelay(
  attempt: number,
  minDelayMs: number,
  maxDelayMs: number,
  random?: () => number,
): number;

export class GatewayClient {
  constructor(options: ClientOptions);
  readonly state: ConnectionState;
  connect(): void;
  close(): void;
  chat(payload: ChatPayload, handlers?: AnswerHandlers): Answer;
  onStatus(fn: (state: ConnectionState, detail?: StatusDetail | SystemPayload) => void): () => void;
  onSystem(fn: (payload: SystemPayload) => void): () => void;
}
