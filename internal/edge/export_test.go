package edge

// SetRequestHook makes f run before every request e handles (tests only).
func SetRequestHook(e *Edge, f func(op string)) { e.requestHook.Store(&f) }
