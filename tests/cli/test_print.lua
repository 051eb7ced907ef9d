-- test_print.lua — tostring(tensor) (lua/sere/print.lua): PyTorch-style
-- layout, aligned columns, fixed / integer-valued / scientific notation,
-- dtype, requires_grad and grad_fn suffixes, 0-dim and empty tensors,
-- non-finite values, line wrapping, and summarisation of big tensors.
local T = dofile("tests/lua/harness.lua")
local sere = require "sere"

local function shows(t, expected)
  local got = tostring(t)
  if got ~= expected then error(string.format("expected\n%s\ngot\n%s", expected, got), 2) end
end

T.test("fixed notation, aligned columns, nested brackets", function()
  shows(sere.tensor({{1, -2.5}, {3, 4}}), "tensor([[ 1.0000, -2.5000],\n        [ 3.0000,  4.0000]])")
  shows(sere.tensor({0.5, -12.25, 100}), "tensor([  0.5000, -12.2500, 100.0000])")
  shows(sere.tensor({{{1.5, 2}, {3, 4}}, {{5, 6}, {7, 8}}}),
    "tensor([[[1.5000, 2.0000],\n         [3.0000, 4.0000]],\n\n        [[5.0000, 6.0000],\n         [7.0000, 8.0000]]])")
end)

T.test("integer-valued floats, integers, booleans", function()
  shows(sere.tensor({1.0, -2.0, 30.0}), "tensor([ 1., -2., 30.])")
  shows(sere.tensor({0.0, 0.0}), "tensor([0., 0.])")
  shows(sere.tensor({{1, -20}, {300, 4}}), "tensor([[  1, -20],\n        [300,   4]])")
  shows(sere.tensor({true, false, true}), "tensor([ true, false,  true])")
  shows(sere.tensor({9007199254740993}), "tensor([9007199254740993])") -- i64 exactly, not through a double
end)

T.test("scientific notation for wide magnitude ranges", function()
  shows(sere.tensor({1e-5, 1, 1000}), "tensor([1.0000e-05, 1.0000e+00, 1.0000e+03])")
  shows(sere.tensor({1, 2000.0}), "tensor([1.0000e+00, 2.0000e+03])")
  shows(sere.tensor({-3e9, 0.5}), "tensor([-3.0000e+09,  5.0000e-01])")
  shows(sere.tensor({2e8}), "tensor([2.0000e+08])")
end)

T.test("non-finite values", function()
  shows(sere.tensor({0 / 0, 1 / 0, -1 / 0, 1.5}), "tensor([   nan,    inf,   -inf, 1.5000])")
  shows(sere.tensor({0 / 0, 2}), "tensor([nan,  2.])")
end)

T.test("dtype suffix only for non-default dtypes", function()
  shows(sere.tensor({1, 2}, {dtype = "i32"}), "tensor([1, 2], dtype=i32)")
  shows(sere.tensor({1.5, 2}, {dtype = "bf16"}), "tensor([1.5000, 2.0000], dtype=bf16)")
  shows(sere.tensor({255, 0}, {dtype = "u8"}), "tensor([255,   0], dtype=u8)")
  shows(sere.tensor({1, 2}, {dtype = "i64"}), "tensor([1, 2])")
  shows(sere.tensor({1, 2}, {dtype = "f32"}), "tensor([1., 2.])")
  -- a suffix that would pass 80 columns goes on its own line
  shows(sere.arange(100, 114, {dtype = "i32"}),
    "tensor([100, 101, 102, 103, 104, 105, 106, 107, 108, 109, 110, 111, 112, 113],\n       dtype=i32)")
end)

T.test("0-dim and empty tensors", function()
  shows(sere.tensor(3.5), "tensor(3.5000)")
  shows(sere.tensor(-3), "tensor(-3)")
  shows(sere.tensor(2.0), "tensor(2.)")
  shows(sere.tensor(true), "tensor(true)")
  shows(sere.tensor(7, {dtype = "i32"}), "tensor(7, dtype=i32)")
  shows(sere.zeros(0), "tensor([])")
  shows(sere.zeros(0, 3), "tensor([], size=[0, 3])")
  shows(sere.zeros({2, 0}, {dtype = "i32"}), "tensor([], size=[2, 0], dtype=i32)")
end)

T.test("requires_grad and grad_fn suffixes; views print their own values", function()
  local x = sere.tensor({{1.5, 2}, {3, 4}}, {requires_grad = true})
  shows(x, "tensor([[1.5000, 2.0000],\n        [3.0000, 4.0000]], requires_grad=true)")
  local xt = x:transpose(1, 2)
  shows(xt, "tensor([[1.5000, 3.0000],\n        [2.0000, 4.0000]], grad_fn=<" .. xt.grad_fn .. ">)")
  shows(x:detach():narrow(2, 2, 1), "tensor([[2.],\n        [4.]])")
  shows(sere.no_grad(function() return x:select(1, 2) end), "tensor([3., 4.])")
end)

T.test("long rows wrap at 80 columns, aligned under the first element", function()
  local s = tostring(sere.arange(0, 45, 1.5))
  local lines = {}
  for line in s:gmatch("[^\n]+") do lines[#lines + 1] = line end
  T.eq(#lines, 4) -- 8 per line: (80 - #"tensor(") // (#"43.5000" + #", ")
  T.eq(lines[1]:sub(1, 16), "tensor([ 0.0000,")
  for i = 1, #lines do assert(#lines[i] <= 80, "line longer than 80 columns: " .. lines[i]) end
  T.eq(lines[2]:sub(1, 10), "        12")
end)

-- the values printed are the tensor's values, rounded to 4 decimals
T.test("printed values match totable()", function()
  local t = sere.randn(7, 5)
  local expected = {}
  for _, row in ipairs(t:totable()) do
    for _, v in ipairs(row) do expected[#expected + 1] = string.format("%.4f", v) end
  end
  local got = {}
  for num in tostring(t):gmatch("%-?%d+%.%d+") do got[#got + 1] = num end
  T.eq(#got, 35)
  for i = 1, #got do T.eq(got[i], expected[i], "element " .. i) end
end)

T.test("big tensors are summarised with the first and last 3 entries per dim", function()
  shows(sere.arange(2000):view(40, 50),
    "tensor([[   0,    1,    2,  ...,   47,   48,   49],\n" ..
    "        [  50,   51,   52,  ...,   97,   98,   99],\n" ..
    "        [ 100,  101,  102,  ...,  147,  148,  149],\n" ..
    "        ...,\n" ..
    "        [1850, 1851, 1852,  ..., 1897, 1898, 1899],\n" ..
    "        [1900, 1901, 1902,  ..., 1947, 1948, 1949],\n" ..
    "        [1950, 1951, 1952,  ..., 1997, 1998, 1999]])")
  shows(sere.arange(1001), "tensor([   0,    1,    2,  ...,  998,  999, 1000])")
  shows(sere.arange(1000):view(2, 500), tostring(sere.arange(1000):view(2, 500):clone())) -- 1000 is not summarised
  T.eq(select(2, tostring(sere.arange(1000):view(2, 500)):gsub("%.%.%.", "")), 0)
  shows(sere.arange(100.0, 1102.0):view(2, 501),
    "tensor([[ 100.,  101.,  102.,  ...,  598.,  599.,  600.],\n" ..
    "        [ 601.,  602.,  603.,  ..., 1099., 1100., 1101.]])")
  -- a non-contiguous big tensor: the pieces come from the right places
  shows(sere.arange(2000):view(40, 50):t(),
    "tensor([[   0,   50,  100,  ..., 1850, 1900, 1950],\n" ..
    "        [   1,   51,  101,  ..., 1851, 1901, 1951],\n" ..
    "        [   2,   52,  102,  ..., 1852, 1902, 1952],\n" ..
    "        ...,\n" ..
    "        [  47,   97,  147,  ..., 1897, 1947, 1997],\n" ..
    "        [  48,   98,  148,  ..., 1898, 1948, 1998],\n" ..
    "        [  49,   99,  149,  ..., 1899, 1949, 1999]])")
end)

T.test("printing a big tensor reads only the summarised pieces", function()
  local t = sere.zeros(3000, 3000)
  local start = os.clock()
  for _ = 1, 20 do tostring(t) end
  local per_call = (os.clock() - start) / 20
  assert(per_call < 0.01, string.format("tostring of a 3000x3000 tensor took %.3f s", per_call))
  T.eq(select(2, tostring(t):gsub("\n", "")), 6)
end)

T.test("print options", function()
  local printer = require "sere.print"
  local ok, err = pcall(function()
    printer.set_printoptions({precision = 2})
    shows(sere.tensor({1.125, 2}), "tensor([1.12, 2.00])")
    printer.set_printoptions({sci_mode = true})
    shows(sere.tensor({1.5, 2}), "tensor([1.50e+00, 2.00e+00])")
    printer.set_printoptions({sci_mode = false, precision = 4})
    shows(sere.tensor({1e-5, 1000}), "tensor([   0.0000, 1000.0000])")
    printer.set_printoptions({threshold = 4, edgeitems = 1})
    shows(sere.arange(5), "tensor([0,  ..., 4])")
  end)
  printer.set_printoptions({precision = 4, sci_mode = "auto", threshold = 1000, edgeitems = 3})
  assert(ok, err)
  shows(sere.tensor({1e-5, 1000}), "tensor([1.0000e-05, 1.0000e+03])")
  T.raises(function() printer.set_printoptions({colour = true}) end, "unknown option 'colour'")
  T.raises(function() printer.set_printoptions({precision = -1}) end, "bad value %-1 for 'precision'")
  T.raises(function() printer.set_printoptions({sci_mode = "yes"}) end, "bad value yes for 'sci_mode'")
end)

T.finish()
