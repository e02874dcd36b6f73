//! llm: see its issue. (skeleton)
