# A step script rendered by imaging.powershell; every value in it came through ps_literal.
Set-StrictMode -Version 3
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'

function Write-ImagingResult {
    # The only way a step reports: one compressed JSON line between two marker lines.
    param([Parameter(Mandatory = $true)] [System.Collections.IDictionary] $Result)
    $json = ConvertTo-Json -InputObject $Result -Depth 8 -Compress
    Write-Output '<<<IMAGING-RESULT>>>'
    Write-Output $json
    Write-Output '<<<END-IMAGING-RESULT>>>'
}

function Write-ImagingFailure {
    # A failed step still reports in the same frame, saying whether it had already changed something.
    param(
        [Parameter(Mandatory = $true)] [System.Management.Automation.ErrorRecord] $ErrorRecord,
        [Parameter(Mandatory = $true)] [System.Collections.IDictionary] $Result
    )
    $where = ''
    if ($null -ne $ErrorRecord.InvocationInfo) { $where = [string]$ErrorRecord.InvocationInfo.PositionMessage }
    $Result['ok'] = $false
    $Result['error'] = [string]$ErrorRecord.Exception.Message
    $Result['where'] = $where
    # What kind of failure it was, for the provider's retry of a file another process holds (ObjectInUse)
    $Result['error_id'] = [string]$ErrorRecord.FullyQualifiedErrorId
    $Result['category'] = [string]$ErrorRecord.CategoryInfo.Category
    $Result['hresult'] = [int]$ErrorRecord.Exception.HResult
    Write-ImagingResult -Result $Result
}

function Initialize-ImagingFolder {
    # Creates a folder (and its parents) if it is missing; never touches an existing one.
    param([Parameter(Mandatory = $true)] [string] $Path)
    if (-not (Test-Path -LiteralPath $Path -PathType Container)) {
        New-Item -ItemType Directory -Path $Path -Force | Out-Null
    }
}

function Get-ImagingSha256 {
    param([Parameter(Mandatory = $true)] [string] $Path)
    (Get-FileHash -LiteralPath $Path -Algorithm SHA256).Hash.ToLowerInvariant()
}
function Assert-ImagingDiskOffline {
    # A disk of an old machine is read or changed on the host only while no running VM uses it.
    param([Parameter(Mandatory = $true)] [string] $Path)
    $users = @(Get-VM | Where-Object { [string]$_.State -ne 'Off' } | Get-VMHardDiskDrive | Where-Object { $_.Path -eq $Path })
    if ($users.Count -gt 0) { throw "$Path belongs to the running VM $($users[0].VMName); it is used only while its VM is off" }
}

function Mount-ImagingVolume {
    # Mounts a VHDX without a drive letter and exposes its largest data partition at a fresh, empty folder
    # in the temp directory. Callers hold the provider's per-host mount lock and always call
    # Dismount-ImagingVolume in a finally block.
    param([Parameter(Mandatory = $true)] [string] $Path, [switch] $ReadOnly)
    $mountArgs = @{ Path = $Path; NoDriveLetter = $true; PassThru = $true }
    if ($ReadOnly) { $mountArgs['ReadOnly'] = $true }
    $vhd = Mount-VHD @mountArgs
    $mounted = [ordered]@{ Path = $Path; Folder = $null; DiskNumber = $vhd.DiskNumber; PartitionNumber = $null; Label = $null }
    try {
        $disk = Get-Disk -Number $vhd.DiskNumber
        if ($disk.IsOffline) { Set-Disk -Number $disk.Number -IsOffline $false }
        $partition = @(Get-Partition -DiskNumber $disk.Number | Where-Object { $_.Type -eq 'Basic' } |
            Sort-Object -Property Size -Descending)
        if ($partition.Count -eq 0) { throw "the disk $Path has no data partition" }
        $part = $partition[0]
        $mounted.PartitionNumber = $part.PartitionNumber
        $mounted.Label = [string](Get-Volume -Partition $part).FileSystemLabel
        $folder = Join-Path -Path ([System.IO.Path]::GetTempPath()) -ChildPath ('imaging-' + [guid]::NewGuid().ToString('N'))
        New-Item -ItemType Directory -Path $folder | Out-Null
        $mounted.Folder = $folder
        Add-PartitionAccessPath -DiskNumber $disk.Number -PartitionNumber $part.PartitionNumber -AccessPath ($folder + '\')
    }
    catch {
        Dismount-ImagingVolume -Mounted $mounted
        throw
    }
    return $mounted
}

function Dismount-ImagingVolume {
    # Undoes Mount-ImagingVolume. The mount folder is removed only when empty, never recursively, so a
    # volume that is still mounted there can never be deleted by accident.
    param([Parameter(Mandatory = $true)] [System.Collections.IDictionary] $Mounted)
    if ($null -ne $Mounted.Folder -and $null -ne $Mounted.PartitionNumber) {
        Remove-PartitionAccessPath -DiskNumber $Mounted.DiskNumber -PartitionNumber $Mounted.PartitionNumber `
            -AccessPath ($Mounted.Folder + '\') -ErrorAction SilentlyContinue
    }
    Dismount-VHD -Path $Mounted.Path
    if ($null -ne $Mounted.Folder -and (Test-Path -LiteralPath $Mounted.Folder -PathType Container)) {
        if (@(Get-ChildItem -LiteralPath $Mounted.Folder -Force).Count -eq 0) {
            [System.IO.Directory]::Delete($Mounted.Folder, $false)
        }
    }
}

function Get-ImagingVolumeFiles {
    # Every file under a mounted volume, as paths relative to its root. Reparse points (junctions, links)
    # are listed as skipped and never followed: on an offline disk they point into the host's own C:.
    param(
        [Parameter(Mandatory = $true)] [string] $Root,
        [string[]] $ExcludeRel = @()
    )
    $always = @('System Volume Information', '$Recycle.Bin', 'pagefile.sys', 'hiberfil.sys', 'swapfile.sys')
    $exclude = @($always + $ExcludeRel | ForEach-Object { $_.TrimEnd('\').ToLowerInvariant() })
    $files = New-Object System.Collections.Generic.List[object]
    $skipped = New-Object System.Collections.Generic.List[string]
    $pending = New-Object System.Collections.Generic.Stack[string]
    $pending.Push('')
    while ($pending.Count -gt 0) {
        $rel = $pending.Pop()
        $dir = New-Object System.IO.DirectoryInfo -ArgumentList (Join-Path -Path $Root -ChildPath $rel)
        try { $entries = @($dir.GetFileSystemInfos()) }
        catch { $skipped.Add($rel); continue }
        foreach ($entry in $entries) {
            $childRel = if ($rel) { $rel + '\' + $entry.Name } else { $entry.Name }
            if ($exclude -contains $childRel.ToLowerInvariant()) { continue }
            if (($entry.Attributes -band [System.IO.FileAttributes]::ReparsePoint) -ne 0) {
                $skipped.Add($childRel)
                continue
            }
            if ($entry -is [System.IO.DirectoryInfo]) { $pending.Push($childRel) }
            else {
                $files.Add([pscustomobject]@{ Rel = $childRel; Size = $entry.Length; Full = $entry.FullName })
            }
        }
    }
    return [pscustomobject]@{ Files = $files.ToArray(); Skipped = $skipped.ToArray() }
}

$ImagingAction = 'rescue_user_files'
$Result = [ordered]@{ ok = $true; changed = $false; action = $ImagingAction }
try {
    # Finds files users left on the OS disk before it is thrown away: every file outside the excluded
    # folders that the OS template does not have, or has with a different size or sha256, is copied into
    # the Var volume under dest_rel\files, followed by a list file (written last, so its presence means done).
    # The OS disk and its template are mounted one after the other, read-only: a child and its parent carry
    # the same disk identity, and mounting both at once would make Windows take one offline and rewrite it.
    # The provider holds the host's mount lock while this runs.
    $Vm = 'NDXZOOM'
    $OsPath = 'D:\Imaging\instruments\NDXZOOM\NDXZOOM-os-6.vhdx'
    $TemplatePath = 'D:\Imaging\images\win11-ltsc-2026C3-3f1c0c2a9d5e.vhdx'
    $VarPath = 'D:\Imaging\instruments\NDXZOOM\NDXZOOM-var.vhdx'
    $DestRel = 'rescued/20261121T193000Z'
    $Exclude = @('C:\Windows', 'C:\Program Files', 'C:\Program Files (x86)', 'C:\ProgramData', 'C:\Instrument', 'C:\volumes', 'C:\data')
    $listName = 'rescued.json'
    $destRelWin = $DestRel.Replace('/', '\')
    $excludeRel = @(@($Exclude | Where-Object { $_ -match '^[A-Za-z]:\\.' } | ForEach-Object { $_.Substring(3) }) + 'volumes')
    $Result['files'] = @()
    $Result['skipped'] = @()
    if (-not (Test-Path -LiteralPath $OsPath -PathType Leaf)) {
        $Result['how'] = 'no OS disk, nothing to rescue'
    }
    else {
        if (-not (Test-Path -LiteralPath $TemplatePath -PathType Leaf)) {
            throw "the OS template $TemplatePath is not on this host, so user files cannot be told from system files"
        }
        # 0. Already rescued? The list file is the proof.
        $previous = $null
        $var = Mount-ImagingVolume -Path $VarPath -ReadOnly
        try {
            $listPath = Join-Path -Path (Join-Path -Path $var.Folder -ChildPath $destRelWin) -ChildPath $listName
            if (Test-Path -LiteralPath $listPath -PathType Leaf) { $previous = [System.IO.File]::ReadAllText($listPath) }
        }
        finally { Dismount-ImagingVolume -Mounted $var }
        if ($null -ne $previous) {
            $Result['files'] = @((ConvertFrom-Json -InputObject $previous).files | ForEach-Object { $_.path })
            $Result['how'] = 'already rescued'
        }
        else {
            # 1. What is on the OS disk.
            $os = Mount-ImagingVolume -Path $OsPath -ReadOnly
            try { $listing = Get-ImagingVolumeFiles -Root $os.Folder -ExcludeRel $excludeRel }
            finally { Dismount-ImagingVolume -Mounted $os }
            # 2. What the template has for the same paths.
            $templateHash = @{}
            $tmpl = Mount-ImagingVolume -Path $TemplatePath -ReadOnly
            try {
                foreach ($file in $listing.Files) {
                    $twin = Join-Path -Path $tmpl.Folder -ChildPath $file.Rel
                    $info = New-Object System.IO.FileInfo -ArgumentList $twin
                    # Same size: the hashes decide (step 3). Absent or another size: the file is the user's.
                    if ($info.Exists -and $info.Length -eq $file.Size) { $templateHash[$file.Rel] = Get-ImagingSha256 -Path $twin }
                }
            }
            finally { Dismount-ImagingVolume -Mounted $tmpl }
            # 3. Hash the OS copies, keep the new or changed ones, copy them into Var and verify each copy.
            $rescued = New-Object System.Collections.Generic.List[object]
            $os = Mount-ImagingVolume -Path $OsPath -ReadOnly
            try {
                $var = Mount-ImagingVolume -Path $VarPath
                try {
                    $destRoot = Join-Path -Path $var.Folder -ChildPath $destRelWin
                    foreach ($file in $listing.Files) {
                        $source = Join-Path -Path $os.Folder -ChildPath $file.Rel
                        $hash = Get-ImagingSha256 -Path $source
                        if ($templateHash.ContainsKey($file.Rel) -and $templateHash[$file.Rel] -eq $hash) { continue }
                        $target = Join-Path -Path (Join-Path -Path $destRoot -ChildPath 'files') -ChildPath $file.Rel
                        Initialize-ImagingFolder -Path (Split-Path -Path $target -Parent)
                        Copy-Item -LiteralPath $source -Destination $target -Force
                        if ((Get-ImagingSha256 -Path $target) -ne $hash) { throw "the rescued copy of C:\$($file.Rel) does not match the original" }
                        $rescued.Add([ordered]@{ path = $file.Rel.Replace('\', '/'); size = $file.Size; sha256 = $hash })
                        $Result['changed'] = $true
                    }
                    Initialize-ImagingFolder -Path $destRoot
                    $list = [ordered]@{
                        vm = $Vm; os_path = $OsPath; template_path = $TemplatePath
                        rescued_utc = [DateTime]::UtcNow.ToString('o'); files = @($rescued.ToArray())
                        skipped = @($listing.Skipped | ForEach-Object { 'C:\' + $_ })
                    }
                    [System.IO.File]::WriteAllText((Join-Path -Path $destRoot -ChildPath $listName),
                        (ConvertTo-Json -InputObject $list -Depth 5), (New-Object System.Text.UTF8Encoding -ArgumentList $false))
                    $Result['changed'] = $true
                }
                finally { Dismount-ImagingVolume -Mounted $var }
            }
            finally { Dismount-ImagingVolume -Mounted $os }
            $Result['files'] = @($rescued.ToArray() | ForEach-Object { $_.path } | Sort-Object)
            $Result['skipped'] = @($listing.Skipped | ForEach-Object { 'C:\' + $_ })
            $Result['how'] = 'rescued'
        }
    }
    $Result['dest_rel'] = $DestRel
    Write-ImagingResult -Result $Result
}
catch {
    Write-ImagingFailure -ErrorRecord $_ -Result $Result
}
