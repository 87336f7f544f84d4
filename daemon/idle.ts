// Idle exit: counts what is in flight (the daemon counts open connections) and
// fires once nothing has been for `timeoutMs`. systemd keeps the listening
// socket, so a connection that arrives after the exit starts the daemon again.

export class IdleTimer {
  private inFlight = 0;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly timeoutMs: number,
    private readonly onIdle: () => void,
  ) {
    this.arm();
  }

  get active(): number {
    return this.inFlight;
  }

  begin(): void {
    this.inFlight++;
    this.disarm();
  }

  end(): void {
    this.inFlight = Math.max(0, this.inFlight - 1);
    if (this.inFlight === 0) this.arm();
  }

  stop(): void {
    this.disarm();
  }

  private arm(): void {
    this.disarm();
    if (this.timeoutMs <= 0) return;
    this.timer = setTimeout(this.onIdle, this.timeoutMs);
    this.timer.unref();
  }

  private disarm(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }
}
