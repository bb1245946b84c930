package migrate

import (
	"fmt"
	"sync"
)

// Sessions ties a migration's extra connections (the post-copy request
// channel, the parallel streams) to the migration they serve, by VM id and
// authenticated peer. One Sessions serves every connection of a receiver
// (ReceiveOptions.Sessions); nil means this receiver takes neither
// post-copy nor extra streams.
type Sessions struct {
	// mu guards both maps.
	mu       sync.Mutex
	postcopy map[VMID]*postcopySession
}

// NewSessions returns an empty registry.
func NewSessions() *Sessions {
	return &Sessions{postcopy: map[VMID]*postcopySession{}}
}

func (g *Sessions) addPostcopy(s *postcopySession) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if old := g.postcopy[s.id]; old != nil && !old.isComplete() {
		return fmt.Errorf("a post-copy migration of VM %v is already in progress here", s.id)
	}
	s.attached = true
	g.postcopy[s.id] = s
	return nil
}

func (g *Sessions) removePostcopy(s *postcopySession) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.postcopy[s.id] == s {
		delete(g.postcopy, s.id)
	}
}

// findPostcopy returns the post-copy session of VM id from peer, if any.
func (g *Sessions) findPostcopy(id VMID, peer string) (*postcopySession, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	s := g.postcopy[id]
	if s == nil {
		return nil, fmt.Errorf("no post-copy migration of VM %v is in progress here", id)
	}
	if s.peer != peer {
		return nil, fmt.Errorf("the post-copy migration of VM %v came from another peer", id)
	}
	return s, nil
}
