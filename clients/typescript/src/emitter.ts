// A small typed event emitter that works the same in browsers and Node.

export type Handler<A extends unknown[]> = (...args: A) => void;

export class Emitter<Events extends { [K in keyof Events]: unknown[] }> {
  private readonly handlers = new Map<keyof Events, Set<Handler<never>>>();

  /** Calls `handler` for every `event`; returns a function that removes it. */
  on<K extends keyof Events>(event: K, handler: Handler<Events[K]>): () => void {
    let set = this.handlers.get(event);
    if (!set) this.handlers.set(event, (set = new Set()));
    set.add(handler as Handler<never>);
    return () => this.off(event, handler);
  }

  /** Calls `handler` for the next `event` only. */
  once<K extends keyof Events>(event: K, handler: Handler<Events[K]>): () => void {
    const off = this.on(event, ((...args: Events[K]) => {
      off();
      handler(...args);
    }) as Handler<Events[K]>);
    return off;
  }

  off<K extends keyof Events>(event: K, handler: Handler<Events[K]>): void {
    this.handlers.get(event)?.delete(handler as Handler<never>);
  }

  protected emit<K extends keyof Events>(event: K, ...args: Events[K]): void {
    const set = this.handlers.get(event);
    if (!set) return;
    for (const h of [...set]) {
      try {
        (h as Handler<Events[K]>)(...args);
      } catch (e) {
        // An application handler must not break the connection's message loop; report it
        // the way an uncaught error in an event handler is reported.
        setTimeout(() => {
          throw e;
        });
      }
    }
  }
}
