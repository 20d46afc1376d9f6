"""quiesce drill: restore snapshots into throwaway servers and verify them."""
