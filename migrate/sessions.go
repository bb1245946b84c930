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
	streams  map[VMID]*streamGroup
}

// NewSessions returns an empty registry.
func NewSessions() *Sessions {
	return &Sessions{postcopy: map[VMID]*postcopySession{}, streams: map[VMID]*streamGroup{}}
}

func (g *Sessions) addStreams(s *streamGroup) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.streams[s.id] != nil {
		return fmt.Errorf("a migration of VM %v with parallel streams is already in progress here", s.id)
	}
	g.streams[s.id] = s
	return nil
}

func (g *Sessions) removeStreams(s *streamGroup) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.streams[s.id] == s {
		delete(g.streams, s.id)
	}
}

// findStreams returns the stream group of VM id from peer, if any.
func (g *Sessions) findStreams(id VMID, peer string) (*streamGroup, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	s := g.streams[id]
	if s == nil {
		return nil, fmt.Errorf("no migration of VM %v with parallel streams is in progress here", id)
	}
	if s.peer != peer {
		return nil, fmt.Errorf("the migration of VM %v came from another peer", id)
	}
	return s, nil
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
