import type Pusher from 'pusher-js';

/** Where a client is in a history channel's stream. */
export interface Position {
  /** Identifies the stream; a new epoch means the old stream is gone. */
  epoch: string;
  /** Offset of the last event seen (0: none yet). */
  offset: number;
}

/** Why a resume was refused. */
export type NotRecoveredReason =
  | 'invalid_position'
  | 'stream_lost'
  | 'epoch_changed'
  | 'unknown_position'
  | 'too_many_missed'
  | 'expired'
  | 'too_large';

/** Data of the `herald:recovery` event, sent after each re-subscribe that carried a position. */
export interface RecoveryVerdict {
  /** true: every missed event follows, in order; false: missed events are lost, reload state. */
  recovered: boolean;
  /** How many missed events follow this event (0 when not recovered). */
  replayed: number;
  /** Present when not recovered. */
  reason?: NotRecoveredReason | string;
}

/**
 * Makes a pusher-js instance resume Herald history channels after a reconnect.
 * Returns the same instance.
 */
export function withRecovery<T extends Pusher>(pusher: T): T;
