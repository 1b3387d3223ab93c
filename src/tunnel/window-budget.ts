/**
 * How much credit one tunnel's channels may grant the peer in all (docs/SECURITY.md
 * "Memory per tunnel"). Each channel's receive window (mux-channel.ts) is what the peer
 * may have sent and we not yet granted back: bytes we hold while its consumer does not
 * read. Before, every channel granted CHANNEL_WINDOW_BYTES (4 MiB) at once, and 4,096
 * channels with consumers that read nothing could hold ~16 GiB of one peer's data.
 *
 * Like QUIC stacks (quinn, quiche: a stream's window starts small and grows as the
 * application reads it, under a connection-wide limit), a channel starts with
 * INITIAL_CHANNEL_WINDOW_BYTES and doubles each time its consumer took a quarter of it
 * (a WINDOW grant), up to CHANNEL_WINDOW_BYTES, while the tunnel's windows together stay within
 * TUNNEL_WINDOW_BUDGET_BYTES. A channel opened once the budget is spent gets
 * MIN_CHANNEL_WINDOW_BYTES, and grows back as channels close and give their windows back.
 * Unlike HTTP/2's connection window this needs nothing from the peer: it only grants less,
 * and a peer (any natd version) sends what it is granted. So an idle channel (a shell)
 * holds 256 KiB of the budget, a busy one 4 MiB, and a stalled one what it had grown to.
 */

/** How much a grant of `consumed` bytes grows a window: ×4, so a grant (a quarter of the window read) doubles it. */
const GROWTH_PER_CONSUMED = 4

/** The most a channel's window grows to: ~BDP of 40 MB/s × 100 ms, per channel. */
export const CHANNEL_WINDOW_BYTES = 4 * 1024 * 1024
/**
 * A new channel's window while the budget has room: an interactive channel never needs
 * more (2.5 MB/s at 100 ms), and a bulk one reaches CHANNEL_WINDOW_BYTES after 960 KiB
 * read (four grants, each a quarter of the window: 64, 128, 256 and 512 KiB).
 */
export const INITIAL_CHANNEL_WINDOW_BYTES = 256 * 1024
/**
 * A new channel's window once the budget is spent: it still moves (160 KB/s at 100 ms),
 * and it is not counted against the budget's room for growth. Past the budget, 4,096
 * channels (MAX_CHANNELS) hold at most 64 MiB more.
 */
export const MIN_CHANNEL_WINDOW_BYTES = 16 * 1024
/**
 * The windows of one tunnel's channels together: 16 channels at CHANNEL_WINDOW_BYTES.
 * The sender keeps at most REPLAY_MAX_BYTES (16 MiB) in flight per tunnel, so four busy
 * channels at full window already fill a tunnel at any round trip; the rest is room for
 * consumers that read slower than the path (a disk, a slow local service).
 */
export const TUNNEL_WINDOW_BUDGET_BYTES = 64 * 1024 * 1024

/** Windows granted out of one tunnel's budget. */
export class WindowBudget {
  /** Bytes of window held by the tunnel's channels (MIN_CHANNEL_WINDOW_BYTES ones included). */
  private held = 0

  constructor(readonly budgetBytes = TUNNEL_WINDOW_BUDGET_BYTES) {}

  /** A new channel's window: INITIAL_CHANNEL_WINDOW_BYTES if the budget has room, else MIN_CHANNEL_WINDOW_BYTES. */
  open(): number {
    const window = this.held + INITIAL_CHANNEL_WINDOW_BYTES <= this.budgetBytes ? INITIAL_CHANNEL_WINDOW_BYTES : MIN_CHANNEL_WINDOW_BYTES
    this.held += window
    return window
  }

  /**
   * The consumer of a channel with `window` took `consumed` bytes: its window grows by
   * four times as much (at most to CHANNEL_WINDOW_BYTES) as far as the budget has room;
   * returns the new window.
   */
  grow(window: number, consumed: number): number {
    const wanted = Math.min(CHANNEL_WINDOW_BYTES, window + GROWTH_PER_CONSUMED * consumed) - window
    const extra = Math.max(0, Math.min(wanted, this.budgetBytes - this.held))
    this.held += extra
    return window + extra
  }

  /** A channel with `window` closed (or reads nothing more): its window is free again. */
  close(window: number): void {
    this.held = Math.max(0, this.held - window)
  }

  /** Bytes of window the tunnel's channels hold now. */
  get heldBytes(): number {
    return this.held
  }
}

/**
 * When a channel grants credit back: once its consumer took a quarter of its window (so
 * the peer always holds ≥ 3/4 of it), at most WINDOW_UPDATE_MIN_BYTES, to keep WINDOW
 * frames rare at full window (mux-channel.ts).
 */
export function windowUpdateBytes(window: number, updateMinBytes: number): number {
  return Math.min(updateMinBytes, Math.max(1, Math.floor(window / 4)))
}
