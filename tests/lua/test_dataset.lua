-- test_dataset.lua — sere.dataset_scan (ImageFolder trees) and
-- sere.dataset_list (list files): counts, classes in byte order, labels
-- (1-based in Lua), the file order of torchvision's make_dataset (the
-- expected list below was printed by torchvision 0.14 on the same tree),
-- symbolic links, extensions in any case, and the errors for empty trees,
-- empty classes and malformed list files.
local T = dofile("tests/lua/harness.lua")
local sere = require "sere"

local base = os.tmpname()
os.remove(base)
local function sh(cmd) assert(os.execute(cmd), cmd) end
local function touch(p, bytes)
  local f = assert(io.open(p, "wb"))
  f:write(bytes or "")
  f:close()
end
local function read(p)
  local f = assert(io.open(p, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

-- The tree: classes "C_upper" < "a_class" < "b_class" < "d_link" (a link to
-- a_class) < "empty_not"; non-image files and files directly in the root are ignored.
local root = base .. "_tree"
sh(string.format("mkdir -p %s/a_class %s/b_class/sub/deeper %s/b_class/a-b %s/C_upper %s/empty_not", root, root, root,
                 root, root))
for _, f in ipairs {"a_class/1.png", "a_class/10.png", "a_class/2.png", "b_class/z.png", "b_class/a.JPG",
                    "b_class/notes.txt", "b_class/x.gif", "b_class/sub/c.jpeg", "b_class/sub/deeper/d.png",
                    "b_class/a-b/e.jpg", "C_upper/img.PNG", "stray.jpg", "empty_not/ok.jpg", "b_class/.png"} do
  touch(root .. "/" .. f)
end
sh(string.format("ln -s a_class %s/d_link", root))
local expected = {
  {"C_upper/img.PNG", 1}, {"a_class/1.png", 2}, {"a_class/10.png", 2}, {"a_class/2.png", 2},
  {"b_class/a.JPG", 3}, {"b_class/z.png", 3}, {"b_class/a-b/e.jpg", 3}, {"b_class/sub/c.jpeg", 3},
  {"b_class/sub/deeper/d.png", 3}, {"d_link/1.png", 4}, {"d_link/10.png", 4}, {"d_link/2.png", 4},
  {"empty_not/ok.jpg", 5},
}

T.test("ImageFolder scan: classes, counts, torchvision's order, 1-based labels", function()
  local ds = sere.dataset_scan(root .. "/") -- a trailing slash is ignored
  T.eq(ds.count, #expected, "count")
  T.eq(#ds, #expected, "#ds")
  T.eq(ds.num_classes, 5, "num_classes")
  T.eq(ds.root, root, "root")
  T.eq(table.concat(ds.classes, ","), "C_upper,a_class,b_class,d_link,empty_not", "classes")
  T.eq(ds.classes, ds.classes, "classes table is cached")
  T.eq(table.concat(ds:class_counts(), ","), "1,3,5,3,1", "class counts")
  for i, e in ipairs(expected) do
    T.eq(ds:path(i), root .. "/" .. e[1], "path " .. i)
    T.eq(ds:label(i), e[2], "label " .. i)
  end
  T.raises(function() ds:path(0) end, "index 0 is out of range %[1, 13%]")
  T.raises(function() ds:label(14) end, "index 14 is out of range")
  T.eq(tostring(ds):find("13 files, 5 classes", 1, true) ~= nil, true, "tostring")
end)

T.test("scan errors: missing root, no class folders, a class without images", function()
  T.raises(function() sere.dataset_scan(base .. "_missing") end, "cannot read the root folder '" .. base .. "_missing'")
  local empty = base .. "_empty"
  sh("mkdir -p " .. empty)
  touch(empty .. "/loose.jpg")
  T.raises(function() sere.dataset_scan(empty) end, "no class folders with .jpg, .jpeg or .png files under '" .. empty)
  sh("mkdir -p " .. empty .. "/cls/sub")
  touch(empty .. "/cls/sub/readme.txt")
  T.raises(function() sere.dataset_scan(empty) end, "class folder 'cls' under '" .. empty .. "' holds no")
end)

T.test("scanned paths load as images", function()
  local r = base .. "_img"
  sh(string.format("mkdir -p %s/cat %s/rocket && cp tests/data/images/chelsea_cat_451x300_q90.jpg %s/cat/ && " ..
                   "cp tests/data/images/rocket_tall_crop_184x427_q90.jpg tests/data/images/rocket_launch_640x427.jpg %s/rocket/",
                   r, r, r, r))
  local ds = sere.dataset_scan(r)
  T.eq(ds.count, 3, "count")
  T.eq(table.concat(sere.image_load(ds:path(1)):shape(), "x"), "300x451x3", "cat")
  T.eq(table.concat(sere.image_load(ds:path(3)):shape(), "x"), "427x184x3", "rocket_tall sorts after rocket_launch")
  T.eq(ds:label(3), 2, "label")
end)

T.test("list files: comments, blank lines, relative and absolute paths, labels", function()
  local list = base .. "_list.txt"
  touch(list, table.concat({
    "# train list", "", "a/x.jpg 3", "  b/with space.png   0  ", "\t# indented comment",
    root .. "/a_class/1.png 7\r", "c.jpg 3", ""}, "\n"))
  local ds = sere.dataset_list(list)
  local dir = list:match("^(.*)/")
  T.eq(ds.count, 4, "count")
  T.eq(ds.num_classes, 8, "num_classes = 1 + largest label")
  T.eq(ds.classes, nil, "no class names")
  T.eq(ds:path(1), dir .. "/a/x.jpg", "relative path")
  T.eq(ds:path(2), dir .. "/b/with space.png", "path with a space")
  T.eq(ds:path(3), root .. "/a_class/1.png", "absolute path")
  T.eq(ds:label(1), 4, "label 3 in the file is 4 in Lua")
  T.eq(ds:label(2), 1, "label 0")
  T.eq(ds:label(3), 8, "label 7")
  T.eq(table.concat(ds:class_counts(), ","), "1,0,0,2,0,0,0,1", "class counts")
  -- unlabelled
  touch(list, "one.png\n\ntwo.jpg\n")
  ds = sere.dataset_list(list)
  T.eq(ds.count, 2, "unlabelled count")
  T.eq(ds:label(2), nil, "no label")
  T.eq(ds.num_classes, 0, "no classes")
end)

T.test("list file errors name the file and the line", function()
  local list = base .. "_bad.txt"
  local function bad(text, pattern)
    touch(list, text)
    T.raises(function() sere.dataset_list(list) end, pattern)
  end
  local q = list:gsub("%p", "%%%0")
  bad("a.jpg 1\nb.jpg x\n", q .. ":2: bad label 'x'")
  bad("# c\na.jpg -1\n", q .. ":2: bad label '%-1'")
  bad("a.jpg 1.5\n", q .. ":1: bad label '1.5'")
  bad("a.jpg 99999999999999999999\n", ":1: bad label")
  bad("a.jpg 1\nb.jpg\n", q .. ":2: has no label")
  bad("a.jpg\nb.jpg 2\n", q .. ":2: has a label")
  bad("# only comments\n\n", "lists no files")
  bad("", "lists no files")
  T.raises(function() sere.dataset_list(base .. "_nolist") end, "cannot open")
end)

sh("rm -rf " .. base .. "_tree " .. base .. "_empty " .. base .. "_img " .. base .. "_list.txt " .. base .. "_bad.txt")
T.finish()
