-- prices.lua: what each model costs, per million tokens, for llm.chat's `cost`, llm.usage().cost and the
-- money budget llm.max_cost.
--
-- Each entry is `["model"] = {input = , output = , reasoning = }`: the price of a million prompt tokens,
-- of a million completion tokens and (optional) of a million reasoning tokens when they are priced apart
-- from the output (they are part of the completion tokens; without `reasoning` they cost `output`).
-- A model without an entry of its own takes the longest entry its name starts with, so
-- "claude-sonnet-4-20250514-thinking" is priced as "claude-sonnet-4-20250514". A model with no price
-- at all is not counted (llm.usage().unpriced says how many requests), and llm.max_cost refuses it.
--
-- The numbers are list prices in US dollars as published by the providers; a proxy may charge
-- otherwise. Change them here (copy this file next to your script or into --scripts DIR), or override
-- entries in the config: "llm": {"prices": {"my-model": {"input": 1, "output": 4}}}.
-- The table is read once, when the run first uses the llm module. No side effects at the top level.

return {
  -- OpenAI
  ["gpt-4o-mini"] = { input = 0.15, output = 0.60 },
  ["gpt-4o"] = { input = 2.50, output = 10.00 },
  ["gpt-4.1"] = { input = 2.00, output = 8.00 },
  ["gpt-4.1-mini"] = { input = 0.40, output = 1.60 },
  ["gpt-4.1-nano"] = { input = 0.10, output = 0.40 },
  ["o1"] = { input = 15.00, output = 60.00 },
  ["o3"] = { input = 2.00, output = 8.00 },
  ["o3-mini"] = { input = 1.10, output = 4.40 },
  ["o4-mini"] = { input = 1.10, output = 4.40 },
  ["gpt-5"] = { input = 1.25, output = 10.00 },
  ["gpt-5-mini"] = { input = 0.25, output = 2.00 },
  -- Anthropic
  ["claude-sonnet-4-20250514"] = { input = 3.00, output = 15.00 },
  ["claude-opus-4-20250514"] = { input = 15.00, output = 75.00 },
  ["claude-3-5-haiku"] = { input = 0.80, output = 4.00 },
  -- Google
  ["gemini-2.5-pro"] = { input = 1.25, output = 10.00 },
  ["gemini-2.5-flash"] = { input = 0.30, output = 2.50 },
  ["gemini-3-pro"] = { input = 2.00, output = 12.00 },
  -- DeepSeek
  ["deepseek-chat"] = { input = 0.27, output = 1.10 },
  ["deepseek-reasoner"] = { input = 0.55, output = 2.19 },
}
